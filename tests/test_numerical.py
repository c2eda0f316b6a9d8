"""Numerical gradients and gradient checking (issue 3): the seed's error orders measured, the
documented step rule, numerical_jacobian's layout, taylor_test's observed order, and gradcheck
proven both ways: it passes correct gradients (float64 and float32) and catches wrong ones with
an informative message.

Functions whose reverse-mode gradient is deliberately wrong are built from public ops only, with
the detach trick: ``y + c * (z - z.detach())`` has exactly the value of y (z - z.detach() is 0
in floating point), so finite differences see y, while reverse mode adds c * dz. Nothing is
mocked: gradcheck really has to notice that a value and its gradient disagree.
"""
import math

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff import opdefs
from op_table import DOMAINS, nonzero
from pyautodiff.numerical import (GradcheckError, TaylorResult, default_step, gradcheck,
                                  numerical_grad, numerical_jacobian, taylor_test)


# A smooth test function with a hand-written gradient (plain NumPy, no autodiff involved).
def smooth_f(x):
    return float(np.sum(np.sin(x) * np.exp(x / 2)))


def smooth_grad(x):
    return np.exp(x / 2) * (np.cos(x) + 0.5 * np.sin(x))


X0 = np.array([0.3, -1.2, 2.0, 0.7])


def fitted_slope(eps_values, errors):
    return float(np.polyfit(np.log(eps_values), np.log(errors), 1)[0])


# ---------------------------------------------------------------------------------------------
# The seed's table: forward differences are O(eps), central differences O(eps^2)
# ---------------------------------------------------------------------------------------------
def test_forward_difference_error_falls_with_slope_1():
    # 1e-1 .. 1e-5: truncation error (~eps |f''| / 2, 1e-1 .. 1e-5) stays at least 1e5 times the
    # round-off (~1e-16 |f| / eps <= 1e-10), so the fit sees truncation only.
    eps_values = np.geomspace(1e-1, 1e-5, 9)
    errors = [np.max(np.abs(numerical_grad(smooth_f, X0, eps=e, method="forward")
                            - smooth_grad(X0))) for e in eps_values]
    slope = fitted_slope(eps_values, errors)
    # Higher-order terms bend the curve slightly at the large-eps end: 0.1 absorbs that.
    assert abs(slope - 1.0) < 0.1, (slope, errors)


def test_central_difference_error_falls_with_slope_2():
    # 1e-1 .. 1e-3: truncation (~eps^2 |f'''| / 6, 1e-3 .. 1e-7) stays at least 1e5 times the
    # round-off (<= 1e-13).
    eps_values = np.geomspace(1e-1, 1e-3, 9)
    errors = [np.max(np.abs(numerical_grad(smooth_f, X0, eps=e, method="central")
                            - smooth_grad(X0))) for e in eps_values]
    slope = fitted_slope(eps_values, errors)
    assert abs(slope - 2.0) < 0.1, (slope, errors)


def test_both_methods_converge_to_the_analytic_gradient_at_default_steps():
    exact = smooth_grad(X0)
    # Expected error at the default steps: central ~ c^2 |f'''| + m |f| / c ~ 1e-10, forward
    # ~ c |f''| + m |f| / c ~ 1e-7 (c the relative step, m machine eps); bounds leave 10-100x.
    assert np.max(np.abs(numerical_grad(smooth_f, X0) - exact)) < 1e-8
    assert np.max(np.abs(numerical_grad(smooth_f, X0, method="forward") - exact)) < 1e-6
    # float32 inputs are evaluated in float32: the central error is then ~ 4e-5 (round-off
    # 1.2e-7 |f| / 4.9e-3 dominates), the forward error ~ 1e-3.
    x32 = X0.astype(np.float32)
    assert np.max(np.abs(numerical_grad(smooth_f, x32) - exact)) < 5e-4
    assert np.max(np.abs(numerical_grad(smooth_f, x32, method="forward") - exact)) < 5e-3


def test_default_step_is_the_documented_rule():
    assert default_step(np.float64, "central") == pytest.approx(np.finfo(np.float64).eps ** (1 / 3))
    assert default_step(np.float64, "forward") == pytest.approx(np.sqrt(np.finfo(np.float64).eps))
    assert default_step(np.float32, "central") == pytest.approx(np.finfo(np.float32).eps ** (1 / 3))
    assert default_step(np.float32, "forward") == pytest.approx(np.sqrt(np.finfo(np.float32).eps))

    # Observe the steps numerical_grad actually takes: c * max(1, |x|), per element, after
    # rounding to the input's dtype.
    for dtype, method in [(np.float64, "central"), (np.float32, "central"),
                          (np.float64, "forward"), (np.float32, "forward")]:
        x = np.array([0.25, -3.0, 40.0], dtype=dtype)
        seen = []

        def record(v):
            seen.append(np.array(v))
            return float(np.sum(v))

        numerical_grad(record, x, method=method)
        assert all(v.dtype == dtype for v in seen)
        offsets = np.array([np.max(np.abs(v.astype(np.float64) - x)) for v in seen
                            if not np.array_equal(v, x)])
        expected = default_step(dtype, method) * np.maximum(1.0, np.abs(x.astype(np.float64)))
        per_element = offsets.reshape(3, -1)  # each element is perturbed 2x (central) or 1x
        # Rounding x + h to the dtype moves the step by at most one ulp of x: relative 1e-4 in
        # float32 (ulp(40) / (3.45e-4 * 40)), 1e-9 in float64.
        np.testing.assert_allclose(per_element, np.broadcast_to(expected[:, None],
                                   per_element.shape), rtol=2e-4 if dtype == np.float32 else 1e-9)

    # An explicit eps is used as given: no magnitude scaling.
    seen = []
    numerical_grad(lambda v: seen.append(np.array(v)) or float(np.sum(v)),
                   np.array([100.0]), eps=1e-3)
    perturbed = sorted(float(v[0]) for v in seen if v[0] != 100.0)
    assert perturbed == pytest.approx([100.0 - 1e-3, 100.0 + 1e-3], rel=1e-15)


def test_numerical_grad_returns_one_array_per_input():
    a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -1.0])
    ga, gb = numerical_grad(lambda a, b: float(np.sum(a * b)), a, b)
    assert ga.shape == a.shape and gb.shape == b.shape
    # d/da sum(a * b) = b broadcast; d/db = column sums of a. Central differences of a bilinear
    # function are exact up to round-off (~1e-10 here).
    np.testing.assert_allclose(ga, np.broadcast_to(b, a.shape), atol=1e-9)
    np.testing.assert_allclose(gb, a.sum(axis=0), atol=1e-9)
    assert isinstance(numerical_grad(lambda v: v.sum(), np.ones(3)), np.ndarray)


def test_numerical_grad_on_tensors_and_library_functions():
    x = ad.tensor([0.5, 1.5, -2.0])
    received = []

    def f(t):
        received.append(type(t))
        return ad.tanh(t * t).sum()

    g = numerical_grad(f, x)
    assert set(received) == {ad.Tensor}  # Tensor inputs are handed to f as Tensors
    v = np.array([0.5, 1.5, -2.0])
    np.testing.assert_allclose(g, 2 * v * (1 - np.tanh(v * v) ** 2), atol=1e-9)


def test_numerical_grad_rejects_vector_valued_f():
    with pytest.raises(ValueError, match="numerical_jacobian"):
        numerical_grad(lambda v: v * 2, np.ones(3))
    with pytest.raises(ValueError, match="method"):
        numerical_grad(smooth_f, X0, method="backward")


def test_numerical_jacobian_is_shaped_out_by_in():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((2, 3, 4))
    x = rng.standard_normal(4)
    J = numerical_jacobian(lambda v: M @ v, x)
    assert J.shape == (2, 3) + (4,)
    np.testing.assert_allclose(J, M, atol=1e-9)  # linear: exact up to round-off

    a, b = rng.standard_normal((3, 2)), rng.standard_normal(2)
    Ja, Jb = numerical_jacobian(lambda a, b: a * b, a, b)
    assert Ja.shape == (3, 2, 3, 2) and Jb.shape == (3, 2, 2)
    expected_a = np.einsum("ik,jl->ijkl", np.eye(3), np.diag(b))
    np.testing.assert_allclose(Ja, expected_a, atol=1e-9)
    np.testing.assert_allclose(Jb, np.einsum("ij,jk->ijk", a, np.eye(2)), atol=1e-9)
    # scalar output: Jacobian shaped () + in.shape, i.e. the gradient
    assert numerical_jacobian(lambda v: np.sum(v ** 2), x).shape == (4,)


# ---------------------------------------------------------------------------------------------
# taylor_test
# ---------------------------------------------------------------------------------------------
def test_taylor_test_observes_order_2_central_and_1_forward():
    central = taylor_test(smooth_f, X0, grad=smooth_grad)
    forward = taylor_test(smooth_f, X0, grad=smooth_grad, method="forward")
    assert isinstance(central, TaylorResult)
    # Default sweeps stay in the truncation-dominated range, so the fit is close to the theory.
    assert abs(central.order - 2) < 0.15 and central.expected_order == 2
    assert abs(forward.order - 1) < 0.1 and forward.expected_order == 1
    eps_values = [e for e, _ in central.table]
    assert eps_values == sorted(eps_values, reverse=True) and len(eps_values) >= 5
    assert all(err > 0 for _, err in central.table)


def test_taylor_test_shows_a_wrong_gradient_does_not_converge():
    v = np.array([0.5, -0.5, 0.5, 0.5])
    result = taylor_test(smooth_f, X0, direction=v, grad=lambda x: 1.01 * smooth_grad(x))
    # The error settles at the size of the mistake instead of shrinking: slope about 0. (The
    # largest steps still add some truncation error, which tilts the fit a little upwards.)
    assert result.order < 0.5
    # At the smallest default step (1e-4 x 2.0) truncation is ~1e-8, so the error is the mistake
    # itself: 0.01 <grad, v>, to ~1e-6 relative.
    mistake = 0.01 * abs(float(np.dot(smooth_grad(X0), v)))
    assert result.table[-1][1] == pytest.approx(mistake, rel=1e-5)


def test_taylor_test_exact_differences_report_infinite_order():
    # Central differences of a quadratic are exact: nothing to converge, error at round-off.
    result = taylor_test(lambda v: float(np.sum(v * v)), X0, grad=lambda v: 2 * v)
    assert result.order == math.inf


def test_taylor_test_float32_and_explicit_range():
    x32 = X0.astype(np.float32)
    result = taylor_test(smooth_f, x32, grad=smooth_grad)
    # float32 sweep 0.2 .. 0.01 (x |x|max): truncation still dominates round-off by >= 10x.
    assert abs(result.order - 2) < 0.2
    sweep = [1e-1, 5e-2, 2e-2, 1e-2]
    result = taylor_test(smooth_f, X0, grad=smooth_grad, eps_range=sweep)
    assert [e for e, _ in result.table] == sweep


def test_taylor_test_through_reverse_mode():
    rng = np.random.default_rng(3)
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    x = rng.standard_normal((5, 3))

    def loss(W, b):
        return ad.tanh(x @ W + b).sum()

    def scaled(W, b):
        y = loss(W, b)
        return y + 0.01 * (y - y.detach())

    assert abs(taylor_test(loss, (W, b)).order - 2) < 0.15
    assert taylor_test(scaled, (W, b)).order < 0.5
    # non-scalar f: contracted with a random unit cotangent
    assert abs(taylor_test(lambda W, b: ad.tanh(x @ W + b), (W, b)).order - 2) < 0.15


# ---------------------------------------------------------------------------------------------
# gradcheck: passes correct gradients
# ---------------------------------------------------------------------------------------------
def mlp_loss(x):
    def loss(W1, b1, W2):
        return (ad.tanh(x @ W1 + b1) @ W2).sum()  # b1 broadcasts over the batch
    return loss


def mlp_params(rng, dtype=np.float64):
    return tuple(p.astype(dtype) for p in (rng.standard_normal((3, 5)) / 2,
                                           rng.standard_normal(5), rng.standard_normal((5, 2))))


def test_gradcheck_passes_on_composite_functions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3))
    params = mlp_params(rng)
    assert gradcheck(mlp_loss(x), params) is True
    # Tensor inputs, non-scalar output, several broadcasting inputs, full Jacobian.
    assert gradcheck(lambda W1, b1, W2: ad.sigmoid(x @ W1 + b1) @ W2,
                     tuple(ad.tensor(p) for p in params)) is True
    a, b, c = rng.uniform(0.5, 2, (2, 1, 3)), rng.uniform(0.5, 2, (4, 1)), rng.standard_normal(3)
    assert gradcheck(lambda a, b, c: ad.log(a * b + ad.exp(c)) / ad.sqrt(b), (a, b, c),
                     full=True) is True
    assert gradcheck(lambda a: ad.mean(ad.max(a, axis=1) ** 2.0), (a,)) is True


def test_gradcheck_leaves_the_callers_tensors_alone():
    W = ad.tensor(np.ones((2, 2)), requires_grad=True)
    gradcheck(lambda W: (W * W).sum(), (W,))
    assert W.grad is None


def test_gradcheck_float32_has_no_false_alarms():
    # 30 random float32 models x 8 directions: the float32 step and tolerances (module
    # docstring) must not flag correct gradients. Calibration gave at most 0.3 of the tolerance.
    for seed in range(30):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((16, 3)).astype(np.float32)
        params = mlp_params(rng, np.float32)
        assert gradcheck(mlp_loss(x), params, seed=seed)
        assert gradcheck(lambda W1, b1, W2: ad.tanh(x @ W1 + b1) @ W2, params, seed=seed)
        big = rng.standard_normal(2000).astype(np.float32)
        assert gradcheck(lambda z: (ad.exp(ad.sin(z)) * z + 100.0).sum(), (big,), seed=seed)


# Every op of the core's op table (issue 2), through its public function or operator, on inputs
# away from kinks: gradcheck must pass on each, with random cotangents for non-scalar outputs.
def _distinct(rng, *shapes):
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    values = (rng.permutation(sum(sizes)) - sum(sizes) / 2) * 0.3 + 0.05
    return tuple(np.split(values, np.cumsum(sizes)[:-1])[k].reshape(s)
                 for k, s in enumerate(shapes))


OP_CHECKS = {
    "negative": (lambda x: ad.negative(x), lambda r: (r.standard_normal((3, 4)),)),
    "exp": (ad.exp, lambda r: (r.standard_normal((3, 4)),)),
    "log": (ad.log, lambda r: (r.uniform(0.5, 2, (3, 4)),)),
    "sqrt": (ad.sqrt, lambda r: (r.uniform(0.5, 2, (3, 4)),)),
    "abs": (ad.abs, lambda r: _distinct(r, (3, 4))),
    "sin": (ad.sin, lambda r: (r.standard_normal((3, 4)),)),
    "cos": (ad.cos, lambda r: (r.standard_normal((3, 4)),)),
    "tanh": (ad.tanh, lambda r: (r.standard_normal((3, 4)),)),
    "sigmoid": (ad.sigmoid, lambda r: (3 * r.standard_normal((3, 4)),)),
    "relu": (ad.relu, lambda r: _distinct(r, (3, 4))),
    "add": (ad.add, lambda r: (r.standard_normal((2, 1, 4)), r.standard_normal((3, 1)))),
    "subtract": (ad.subtract, lambda r: (r.standard_normal((4,)), r.standard_normal((3, 4)))),
    "multiply": (ad.multiply, lambda r: (r.standard_normal((2, 1, 4)), r.standard_normal((3, 1)))),
    "divide": (ad.divide, lambda r: (r.standard_normal((3, 4)), r.uniform(0.5, 2, (4,)))),
    "power": (ad.power, lambda r: (r.uniform(0.5, 2, (3, 1)), r.standard_normal((2, 1, 4)))),
    "maximum": (ad.maximum, lambda r: _distinct(r, (2, 1, 4), (3, 1))),
    "minimum": (ad.minimum, lambda r: _distinct(r, (3, 4), (4,))),
    "power_scalar": (lambda x: x ** 2.5, lambda r: (r.uniform(0.5, 2, (3, 4)),)),
    "scalar_power": (lambda x: 2.0 ** x, lambda r: (r.standard_normal((3, 4)),)),
    "scalar_operators": (lambda x: (3.0 - x) * 2.0 / (1.5 + x * x) - 1.0 / (x * x + 1.0),
                         lambda r: (r.standard_normal((3, 4)),)),
    "sum": (lambda x: ad.sum(x, axis=(0, 2)), lambda r: (r.standard_normal((2, 3, 4)),)),
    "sum_all": (lambda x: x.sum(), lambda r: (r.standard_normal((2, 3)),)),
    "mean": (lambda x: ad.mean(x, axis=-1, keepdims=True), lambda r: (r.standard_normal((2, 3, 4)),)),
    "max": (lambda x: ad.max(x, axis=1), lambda r: _distinct(r, (2, 3, 4))),
    "min": (lambda x: ad.min(x), lambda r: _distinct(r, (2, 3, 4))),
    "matmul_2d": (ad.matmul, lambda r: (r.standard_normal((2, 3)), r.standard_normal((3, 4)))),
    "matmul_1d": (ad.matmul, lambda r: (r.standard_normal(3), r.standard_normal((3, 4)))),
    "matmul_vec_vec": (lambda a, b: a @ b, lambda r: (r.standard_normal(3), r.standard_normal(3))),
    "matmul_batched": (ad.matmul, lambda r: (r.standard_normal((2, 1, 2, 3)),
                                             r.standard_normal((3, 3, 4)))),
    "reshape": (lambda x: ad.reshape(x, (4, -1)), lambda r: (r.standard_normal((2, 3, 4)),)),
    "transpose": (lambda x: ad.transpose(x, (1, 0, 2)), lambda r: (r.standard_normal((2, 3, 4)),)),
    "T": (lambda x: x.T, lambda r: (r.standard_normal((2, 3)),)),
    "broadcast_to": (lambda x: ad.broadcast_to(x, (2, 3, 4)), lambda r: (r.standard_normal((3, 1)),)),
    "astype": (lambda x: ad.astype(x, np.float32), lambda r: (r.standard_normal((3, 4)),)),
}
def _mid(rng, shape):
    """Halfway between integers, give or take 0.2: a finite difference sees no jump of floor & co."""
    return rng.integers(-4, 4, shape) + 0.5 + rng.uniform(-0.2, 0.2, shape)


def _quotients(rng):
    """a, b with a / b halfway between integers: floor_divide and mod have no jump nearby."""
    b = np.full((3, 1), 1.5) * rng.choice([-1.0, 1.0], (3, 1))
    return _mid(rng, (2, 1, 4)) * np.abs(b[0, 0]), b


OP_CHECKS.update({
    "floor": (ad.floor, lambda r: (_mid(r, (3, 4)),)), "ceil": (ad.ceil, lambda r: (_mid(r, (3, 4)),)),
    "trunc": (ad.trunc, lambda r: (_mid(r, (3, 4)),)), "sign": (ad.sign, lambda r: (nonzero(r, (3, 4)),)),
    "round": (ad.round, lambda r: (_mid(r, (3, 4)) - 0.5,)),
    "floor_divide": (ad.floor_divide, _quotients), "mod": (ad.mod, _quotients),
    # kinks at 0 and at +-1: points at least 0.2 away
    "leaky_relu": (ad.leaky_relu, lambda r: (nonzero(r, (3, 4)),)),
    "hardtanh": (ad.hardtanh, lambda r: (r.choice([-1.0, 1.0], (3, 4)) * r.choice([0.5, 2.0], (3, 4))
                                         + r.uniform(-0.3, 0.3, (3, 4)),)),
})
# every other elementwise op of pyautodiff/opdefs.py, on its own domain (binary ones broadcasting)
for _op in opdefs.ALL:
    if _op.public and _op.name not in OP_CHECKS:
        _draw = [DOMAINS[d] for d in _op.domain]
        OP_CHECKS[_op.name] = (getattr(ad, _op.name),
                               (lambda r, d=_draw: (d[0](r, (3, 4)),)) if _op.kind == "unary" else
                               (lambda r, d=_draw: (d[0](r, (2, 1, 4)), d[-1](r, (3, 1)))))


@pytest.mark.parametrize("name", sorted(OP_CHECKS))
def test_gradcheck_passes_on_every_core_op(name):
    fn, make_inputs = OP_CHECKS[name]
    inputs = make_inputs(np.random.default_rng(7))
    assert gradcheck(fn, inputs) is True
    assert gradcheck(fn, tuple(v.astype(np.float32) for v in inputs)) is True


# ---------------------------------------------------------------------------------------------
# gradcheck: catches wrong gradients, and says so usefully
# ---------------------------------------------------------------------------------------------
def scaled_gradient(f, factor):
    """f with the same values but a reverse-mode gradient multiplied by factor."""
    def wrong(*args):
        y = f(*args)
        return y + (factor - 1.0) * (y - y.detach())
    return wrong


def test_gradcheck_fails_on_a_gradient_scaled_by_1_01_with_an_informative_message():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3))
    params = mlp_params(rng)
    with pytest.raises(GradcheckError) as info:
        gradcheck(scaled_gradient(mlp_loss(x), 1.01), params)
    error = info.value
    message = str(error)
    for needle in ("inputs[", "random direction #", "analytic", "numeric", "abs error",
                   "rel error", "tolerance", "atol", "rtol", "taylor_test"):
        assert needle in message, needle
    assert error.direction_index is not None and error.input_index is not None
    # A 1% scaling is a relative error of 1 - 1/1.01 on every direction and input.
    assert error.rel_error == pytest.approx(0.01 / 1.01, rel=1e-3)
    assert error.abs_error > error.tolerance
    assert f"{error.analytic:.10g}" in message and f"{error.numeric:.10g}" in message


def test_gradcheck_names_the_input_whose_gradient_is_wrong():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 2)), rng.standard_normal(2)

    def f(a, b):
        y = ad.tanh(a * b).sum()
        # only the gradient with respect to b is scaled, by 1.02
        y_b = ad.tanh(a.detach() * b).sum()
        return y + 0.02 * (y_b - y_b.detach())

    with pytest.raises(GradcheckError) as info:
        gradcheck(f, (a, b))
    assert info.value.input_index == 1
    message = str(info.value)
    assert "inputs[1]" in message and "inputs[0] agrees" in message


def test_gradcheck_float32_still_catches_a_1_percent_error():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    params = mlp_params(rng, np.float32)
    for seed in range(10):
        with pytest.raises(GradcheckError):
            gradcheck(scaled_gradient(mlp_loss(x), 1.01), params, seed=seed)


def test_gradcheck_explicit_tolerances_are_used_as_given():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3))
    params = mlp_params(rng)
    wrong = scaled_gradient(mlp_loss(x), 1.01)
    # rtol 5% is loose enough for a 1% error: the explicit value replaces the default 1e-3.
    assert gradcheck(wrong, params, rtol=0.05, atol=0.0)
    with pytest.raises(GradcheckError, match=r"step 0\.0001\)"):
        gradcheck(wrong, params, eps=1e-4)


def single_wrong_entry(A, i_bad, j_bad, c):
    """tanh(A @ x) whose reverse-mode Jacobian has entry (i_bad, j_bad) off by c, and no other."""
    e_j = np.zeros(A.shape[1])
    e_j[j_bad] = 1.0
    e_i = np.zeros(A.shape[0])
    e_i[i_bad] = 1.0

    def f(x):
        spurious = ((x - x.detach()) @ e_j) * (c * e_i)  # value 0, derivative c e_i e_j^T
        return ad.tanh(A @ x) + spurious
    return f


def test_gradcheck_full_names_the_wrong_jacobian_entry():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 8)) / np.sqrt(8)
    x0 = rng.standard_normal(8)
    f = single_wrong_entry(A, 2, 5, 0.03)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, (x0,), n_directions=0, full=True)
    assert info.value.output_index == (2,) and info.value.element_index == (5,)
    assert info.value.abs_error == pytest.approx(0.03, rel=1e-6)
    assert "d out[2] / d x[5]" in str(info.value)
    assert gradcheck(single_wrong_entry(A, 2, 5, 0.0), (x0,), full=True)


def test_random_directions_detect_a_single_wrong_jacobian_entry():
    # J = diag(1 - tanh^2) A is 6x8 with median |entry| 0.14; one entry is off by 0.03. A random
    # direction delta and cotangent u see the error as c * u_i * delta_j, so a direction misses
    # it only when it nearly misses that entry.
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 8)) / np.sqrt(8)
    x0 = rng.standard_normal(8)
    f = single_wrong_entry(A, 2, 5, 0.03)

    def detected(**kwargs):
        try:
            gradcheck(f, (x0,), **kwargs)
        except GradcheckError:
            return True
        return False

    per_direction = np.mean([detected(n_directions=1, seed=s) for s in range(300)])
    per_check = np.mean([detected(n_directions=8, seed=1000 + s) for s in range(100)])
    print(f"\nsingle wrong Jacobian entry: detected by {per_direction:.1%} of single random "
          f"directions, by {per_check:.1%} of gradchecks with n_directions=8")
    # Measured 88% per direction (300 seeds; binomial sd 1.9%): 75% is 7 sd below. Eight
    # independent directions then miss with probability <= 0.25^8 = 1.5e-5, so all 100 checks
    # must catch it.
    assert per_direction >= 0.75
    assert per_check == 1.0


def test_gradcheck_checks_the_jvp_and_fails_on_a_wrong_one(monkeypatch):
    """check_forward pushes each direction through ad.jvp; a JVP scaled by 1.01 (monkeypatched
    in, so the reverse-mode gradient stays right) must be caught and named as forward mode."""
    import pyautodiff as ad
    from pyautodiff import numerical

    def f(x, y):
        return ad.sum(ad.tanh(x * y) + ad.exp(x) * 0.5)

    inputs = (np.linspace(-1, 1, 6), np.linspace(0.5, 2, 6))
    assert numerical.gradcheck(f, inputs)                    # right JVP: passes

    real_jvp = ad.jvp

    def scaled_jvp(fn, primals, tangents):
        out, tangent = real_jvp(fn, primals, tangents)
        return out, tangent * 1.01
    monkeypatch.setattr(ad, "jvp", scaled_jvp)
    with pytest.raises(numerical.GradcheckError) as info:
        numerical.gradcheck(f, inputs)
    message = str(info.value)
    assert "forward-mode derivative (JVP) disagrees" in message
    # the reported numbers are the 1.01 discrepancy, not noise
    assert info.value.analytic == pytest.approx(1.01 * info.value.numeric, rel=1e-6)
    # and with the forward check off, the (correct) reverse mode passes
    assert numerical.gradcheck(f, inputs, check_forward=False)
