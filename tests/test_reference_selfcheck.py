"""The NumPy reference (pyautodiff.reference) checked against itself: the oracle must be right
before the C kernels are compared with it.

For every op: its VJP against central differences of its own forward, its JVP against central
differences along a tangent, and the two against each other (<g, J t> computed both ways). Then
the named rules: ties split equally, abs'(0) = relu'(0) = 0, NaN-safety, stable softmax family.
Everything here is float64 unless a test is about dtypes.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyautodiff.reference import REFERENCE, RefOp, unbroadcast, zero_safe

# Central-difference step for the finite-difference checks. With h = 1e-5 the truncation error is
# about h^2/6 |f'''| ~ 1e-10 for the O(1..10) third derivatives of these inputs, and round-off
# about 1e-16 |f| / h ~ 1e-11: both far below the tolerances used below.
STEP = 1e-5
# Finite differences vs analytic: 1e-6 relative / 1e-7 absolute leaves a 1000x margin over the
# ~1e-10 finite-difference error above, yet catches any wrong rule (those err by O(1)).
FD_RTOL, FD_ATOL = 1e-6, 1e-7
# VJP vs JVP (<g, J t> both ways) is the same linear algebra done in two orders: only float64
# round-off separates them.
ADJOINT_RTOL, ADJOINT_ATOL = 1e-10, 1e-12


# ---------------------------------------------------------------------------------------------
# Input generators. Kinked ops get inputs at least 0.1 from every kink (>> STEP).
# ---------------------------------------------------------------------------------------------
def smooth(rng, shape):
    return rng.uniform(-2.0, 2.0, shape)


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def away_from_zero(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.3, 2.0, shape)


def distinct(rng, *shapes):
    """Arrays whose values, across all of them, are pairwise at least 0.3 apart (no ties)."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    values = (rng.permutation(sum(sizes)) - sum(sizes) / 2) * 0.3 + 0.05
    arrays, start = [], 0
    for shape, size in zip(shapes, sizes):
        arrays.append(values[start:start + size].reshape(shape))
        start += size
    return arrays


def inside_unit(rng, shape):
    """Inside (-1, 1), at least 0.1 from either end (the domain of arcsin, arccos, arctanh)."""
    return rng.uniform(-0.9, 0.9, shape)


def away_from_integers(rng, shape):
    """At least 0.1 from every integer and every half-integer (the jumps of floor, ceil, trunc
    and round)."""
    offset = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 0.4, shape)
    return rng.integers(-3, 3, shape) + offset


def mod_operands(rng, shape_a, shape_b):
    """(a, b) with b away from 0 and a / b at least 0.1 from every integer, where mod and
    floor_divide jump. One shape must broadcast to the other: the larger operand is built from
    the smaller one and a quotient q = a / b drawn away from the integers."""
    shape = np.broadcast_shapes(shape_a, shape_b)
    quotient = away_from_integers(rng, shape)
    if shape == tuple(shape_a):
        b = away_from_zero(rng, shape_b)
        return b * quotient, b
    assert shape == tuple(shape_b), "mod_operands: one shape must broadcast to the other"
    a = away_from_zero(rng, shape_a)
    # |q| >= 0.1 by construction, so |b| = |a / q| lies in [0.3 / 3.4, 20]: b is never near 0.
    return a, a / quotient


def case(*arrays, **params):
    return list(arrays), params


# Each entry builds (array inputs, keyword parameters) from a random generator.
CASES = {
    "negative": [lambda r: case(smooth(r, (3, 4)))],
    "exp": [lambda r: case(smooth(r, (3, 4))), lambda r: case(smooth(r, ()))],
    "log": [lambda r: case(positive(r, (2, 3)))],
    "sqrt": [lambda r: case(positive(r, (2, 3)))],
    "abs": [lambda r: case(away_from_zero(r, (3, 4)))],
    "sin": [lambda r: case(smooth(r, (5,)))],
    "cos": [lambda r: case(smooth(r, (5,)))],
    "tanh": [lambda r: case(smooth(r, (2, 3)))],
    "sigmoid": [lambda r: case(smooth(r, (2, 3)) * 3)],
    "relu": [lambda r: case(away_from_zero(r, (3, 4)))],
    "log1p": [lambda r: case(r.uniform(-0.5, 2.0, (2, 3)))],
    "expm1": [lambda r: case(smooth(r, (2, 3)))],
    "log2": [lambda r: case(positive(r, (2, 3)))],
    "log10": [lambda r: case(positive(r, (2, 3)))],
    "exp2": [lambda r: case(smooth(r, (2, 3)))],
    "square": [lambda r: case(smooth(r, (2, 3)))],
    "reciprocal": [lambda r: case(away_from_zero(r, (2, 3)))],
    "tan": [lambda r: case(r.uniform(-1.2, 1.2, (5,)))],
    "arcsin": [lambda r: case(inside_unit(r, (5,)))],
    "arccos": [lambda r: case(inside_unit(r, (5,)))],
    "arctan": [lambda r: case(smooth(r, (5,)) * 2)],
    "sinh": [lambda r: case(smooth(r, (5,)))],
    "cosh": [lambda r: case(smooth(r, (5,)))],
    "arcsinh": [lambda r: case(smooth(r, (5,)) * 2)],
    "arccosh": [lambda r: case(r.uniform(1.2, 4.0, (5,)))],
    "arctanh": [lambda r: case(inside_unit(r, (5,)))],
    "erf": [lambda r: case(smooth(r, (2, 3)) * 1.5)],
    "erfc": [lambda r: case(smooth(r, (2, 3)) * 1.5)],
    "softplus": [lambda r: case(smooth(r, (2, 3)) * 3)],
    "gelu": [lambda r: case(smooth(r, (2, 3)) * 2),
             lambda r: case(smooth(r, (2, 3)) * 2, approximate="none"),
             lambda r: case(smooth(r, (2, 3)) * 2, approximate="tanh")],
    "silu": [lambda r: case(smooth(r, (2, 3)) * 3)],
    "leaky_relu": [lambda r: case(away_from_zero(r, (3, 4))),
                   lambda r: case(away_from_zero(r, (3, 4)), negative_slope=0.2)],
    "elu": [lambda r: case(away_from_zero(r, (3, 4))),
            lambda r: case(away_from_zero(r, (3, 4)), alpha=0.5)],
    # The distinct grid (spacing 0.3, offset 0.05) never lands within 0.05 of +-1 or +-0.5.
    "hardtanh": [lambda r: case(*distinct(r, (3, 4))),
                 lambda r: case(*distinct(r, (3, 4)), min_val=-0.5, max_val=0.5)],
    "sign": [lambda r: case(away_from_zero(r, (3, 4)))],
    "floor": [lambda r: case(away_from_integers(r, (3, 4)))],
    "ceil": [lambda r: case(away_from_integers(r, (3, 4)))],
    "round": [lambda r: case(away_from_integers(r, (3, 4)))],
    "trunc": [lambda r: case(away_from_integers(r, (3, 4)))],
    "logaddexp": [lambda r: case(smooth(r, (3, 4)), smooth(r, (4,))),
                  lambda r: case(smooth(r, (3, 1)), smooth(r, (2, 1, 5)))],
    "arctan2": [lambda r: case(smooth(r, (3, 4)), away_from_zero(r, (4,))),
                lambda r: case(away_from_zero(r, (3, 1)), smooth(r, (2, 1, 5)))],
    "hypot": [lambda r: case(away_from_zero(r, (3, 4)), smooth(r, (4,))),
              lambda r: case(smooth(r, (3, 1)), away_from_zero(r, (2, 1, 5)))],
    "floor_divide": [lambda r: case(*mod_operands(r, (3, 4), (4,))),
                     lambda r: case(*mod_operands(r, (3, 1), (2, 3, 5)))],
    "mod": [lambda r: case(*mod_operands(r, (3, 4), (4,))),
            lambda r: case(*mod_operands(r, (3, 1), (2, 3, 5)))],
    "add": [lambda r: case(smooth(r, (3, 4)), smooth(r, (3, 4))),
            lambda r: case(smooth(r, (2, 1, 4)), smooth(r, (3, 1))),
            lambda r: case(smooth(r, ()), smooth(r, (2, 3)))],
    "subtract": [lambda r: case(smooth(r, (2, 1, 4)), smooth(r, (3, 1))),
                 lambda r: case(smooth(r, (4,)), smooth(r, (3, 4)))],
    "multiply": [lambda r: case(smooth(r, (3, 4)), smooth(r, (3, 4))),
                 lambda r: case(smooth(r, (2, 1, 4)), smooth(r, (3, 1)))],
    "divide": [lambda r: case(smooth(r, (3, 4)), away_from_zero(r, (4,))),
               lambda r: case(smooth(r, (3, 1)), away_from_zero(r, (2, 1, 5)))],
    "power": [lambda r: case(positive(r, (3, 4)), smooth(r, (3, 4))),
              lambda r: case(positive(r, (3, 1)), smooth(r, (2, 1, 4)))],
    "maximum": [lambda r: case(*distinct(r, (3, 4), (3, 4))),
                lambda r: case(*distinct(r, (2, 1, 4), (3, 1)))],
    "minimum": [lambda r: case(*distinct(r, (3, 4), (3, 4))),
                lambda r: case(*distinct(r, (4,), (3, 1)))],
    "power_scalar": [lambda r: case(positive(r, (3, 4)), p=2.0),
                     lambda r: case(positive(r, (3, 4)), p=0.5),
                     lambda r: case(positive(r, (5,)), p=-1.5),
                     lambda r: case(smooth(r, (5,)), p=3),
                     lambda r: case(smooth(r, (5,)), p=0.0)],
    "sum": [lambda r: case(smooth(r, (2, 3, 4))),
            lambda r: case(smooth(r, (2, 3, 4)), axis=1),
            lambda r: case(smooth(r, (2, 3, 4)), axis=(0, 2), keepdims=True),
            lambda r: case(smooth(r, (2, 3, 4)), axis=-1),
            lambda r: case(smooth(r, (2, 3)), axis=()),
            lambda r: case(smooth(r, ()))],
    "mean": [lambda r: case(smooth(r, (2, 3, 4))),
             lambda r: case(smooth(r, (2, 3, 4)), axis=(0, -1)),
             lambda r: case(smooth(r, (2, 3, 4)), axis=1, keepdims=True)],
    "max": [lambda r: case(*distinct(r, (2, 3, 4))),
            lambda r: case(*distinct(r, (2, 3, 4)), axis=1),
            lambda r: case(*distinct(r, (2, 3, 4)), axis=(0, 2), keepdims=True),
            lambda r: case(*distinct(r, (3, 4)), axis=())],
    "min": [lambda r: case(*distinct(r, (2, 3, 4))),
            lambda r: case(*distinct(r, (2, 3, 4)), axis=-1),
            lambda r: case(*distinct(r, (2, 3, 4)), axis=(1, 2), keepdims=True)],
    "matmul": [lambda r: case(smooth(r, (3,)), smooth(r, (3,))),
               lambda r: case(smooth(r, (3,)), smooth(r, (3, 4))),
               lambda r: case(smooth(r, (2, 3)), smooth(r, (3,))),
               lambda r: case(smooth(r, (2, 3)), smooth(r, (3, 4))),
               lambda r: case(smooth(r, (5, 2, 3)), smooth(r, (3, 4))),
               lambda r: case(smooth(r, (2, 1, 2, 3)), smooth(r, (3, 3, 4))),
               lambda r: case(smooth(r, (3,)), smooth(r, (2, 3, 4))),
               lambda r: case(smooth(r, (2, 2, 3)), smooth(r, (3,)))],
    "reshape": [lambda r: case(smooth(r, (2, 3, 4)), shape=(4, -1)),
                lambda r: case(smooth(r, (6,)), shape=(1, 2, 3))],
    "transpose": [lambda r: case(smooth(r, (2, 3, 4))),
                  lambda r: case(smooth(r, (2, 3, 4)), axes=(1, 0, 2)),
                  lambda r: case(smooth(r, (2, 3, 4)), axes=(-1, 0, 1))],
    "broadcast_to": [lambda r: case(smooth(r, (3, 1)), shape=(2, 3, 4)),
                     lambda r: case(smooth(r, ()), shape=(2, 2))],
    "cast": [lambda r: case(smooth(r, (2, 3)), dtype=np.float64)],
    "scatter_add": [lambda r: case(smooth(r, (2, 3)), index=[4, 0, 4, 7, 1, 4], shape=(2, 4))],
    # windows of a (5, 4) image: kernel (3, 2), stride (2, 1), padding 1, dilation (1, 2) -> 3 x 4 windows
    "unfold": [lambda r: case(smooth(r, (2, 2, 5, 4)), kernel_size=(3, 2), stride=(2, 1), padding=(1, 1),
                              dilation=(1, 2))],
    "fold": [lambda r: case(smooth(r, (2, 2 * 3 * 2, 12)), output_size=(5, 4), kernel_size=(3, 2), stride=(2, 1),
                            padding=(1, 1), dilation=(1, 2))],
    # the same windows with 3 filters
    "conv2d": [lambda r: case(smooth(r, (2, 2, 5, 4)), smooth(r, (3, 2, 3, 2)), stride=(2, 1), padding=(1, 1),
                              dilation=(1, 2))],
    "mul_zero_safe": [lambda r: case(smooth(r, (3, 4)), smooth(r, (4,)))],
    "getitem": [lambda r: case(smooth(r, (4, 5)), index=(slice(None, None, -2), 3)),
                lambda r: case(smooth(r, (4, 5)), index=(None, Ellipsis, slice(1, 4))),
                lambda r: case(smooth(r, (4, 5)), index=(np.array([0, 2, 0, 3]),)),
                lambda r: case(smooth(r, (4, 5)), index=(np.array([1, 1]), np.array([2, 2]))),
                lambda r: case(smooth(r, (4, 5)), index=np.arange(20).reshape(4, 5) % 3 == 0),
                lambda r: case(smooth(r, (4, 5)), index=(slice(None), [4, 4, 0]))],
    "concatenate": [lambda r: case(smooth(r, (2, 3)), smooth(r, (2, 1)), smooth(r, (2, 4)), axis=1),
                    lambda r: case(smooth(r, (2, 3)), smooth(r, (1, 3))),
                    lambda r: case(smooth(r, (2, 3)), smooth(r, (2, 2)), axis=-1)],
    "stack": [lambda r: case(smooth(r, (2, 3)), smooth(r, (2, 3))),
              lambda r: case(smooth(r, (2, 3)), smooth(r, (2, 3)), smooth(r, (2, 3)), axis=-1)],
    "where": [lambda r: case(smooth(r, (3, 4)), smooth(r, (4,)),
                             cond=r.uniform(size=(3, 1)) > 0.5),
              lambda r: case(smooth(r, (3, 1)), smooth(r, (1, 4)),
                             cond=r.uniform(size=(3, 4)) > 0.5)],
    # The distinct grid (spacing 0.3, offset 0.05) never lands within 0.05 of lo or hi.
    "clip": [lambda r: case(*distinct(r, (3, 4)), lo=-0.5, hi=0.5),
             lambda r: case(*distinct(r, (3, 4)), lo=None, hi=0.2),
             lambda r: case(*distinct(r, (3, 4)), lo=-0.2, hi=None)],
    "logsumexp": [lambda r: case(smooth(r, (2, 3, 4))),
                  lambda r: case(smooth(r, (2, 3, 4)), axis=1),
                  lambda r: case(smooth(r, (2, 3, 4)), axis=(0, 2), keepdims=True)],
    "softmax": [lambda r: case(smooth(r, (3, 4))),
                lambda r: case(smooth(r, (3, 4, 2)), axis=0)],
    "log_softmax": [lambda r: case(smooth(r, (3, 4))),
                    lambda r: case(smooth(r, (3, 4, 2)), axis=1)],
}

# the reference ops of issue 17 (shape ops, reductions and scans, products)
from selfcheck_issue17 import CASES as _ISSUE17  # noqa: E402
CASES.update(_ISSUE17)
# ad.linalg's (reference/lapack.py)
from selfcheck_lapack import CASES as _LAPACK  # noqa: E402
CASES.update(_LAPACK)

ALL_CASES = [pytest.param(name, i, id=f"{name}-{i}")
             for name, builders in CASES.items() for i in range(len(builders))]


def build(name, i, seed=0):
    rng = np.random.default_rng(seed + 1000 * i)
    arrays, params = CASES[name][i](rng)
    return REFERENCE[name], arrays, params, rng


def central_difference(fun, arrays, k, j):
    """d fun / d arrays[k].flat[j] by central differences."""
    plus = [a.copy() for a in arrays]
    minus = [a.copy() for a in arrays]
    plus[k].flat[j] += STEP
    minus[k].flat[j] -= STEP
    return (fun(plus) - fun(minus)) / (2 * STEP)


def test_every_op_has_selfcheck_cases():
    assert set(CASES) == set(REFERENCE)
    assert all(isinstance(op, RefOp) for op in REFERENCE.values())


@pytest.mark.parametrize("name, i", ALL_CASES)
def test_vjp_matches_central_differences_of_forward(name, i):
    op, arrays, params, rng = build(name, i)
    out = op.forward(*arrays, **params)
    g = rng.standard_normal(out.shape)
    grads = op.vjp(g, out, *arrays, **params)
    assert len(grads) == len(arrays)

    def weighted_output(xs):
        return float(np.sum(g * op.forward(*xs, **params)))

    for k, (x, grad) in enumerate(zip(arrays, grads)):
        assert grad.shape == x.shape and grad.dtype == x.dtype
        numeric = np.array([central_difference(weighted_output, arrays, k, j)
                            for j in range(x.size)]).reshape(x.shape)
        np.testing.assert_allclose(grad, numeric, rtol=FD_RTOL, atol=FD_ATOL,
                                   err_msg=f"{name} case {i}: VJP of input {k}")


@pytest.mark.parametrize("name, i", ALL_CASES)
def test_jvp_matches_central_differences_along_tangent(name, i):
    op, arrays, params, rng = build(name, i)
    out = op.forward(*arrays, **params)
    tangents = [rng.standard_normal(x.shape) for x in arrays]
    tangent_out = op.jvp(tangents, out, *arrays, **params)
    assert tangent_out.shape == out.shape and tangent_out.dtype == out.dtype
    plus = op.forward(*[x + STEP * t for x, t in zip(arrays, tangents)], **params)
    minus = op.forward(*[x - STEP * t for x, t in zip(arrays, tangents)], **params)
    np.testing.assert_allclose(tangent_out, (plus - minus) / (2 * STEP), rtol=FD_RTOL,
                               atol=FD_ATOL, err_msg=f"{name} case {i}")


@pytest.mark.parametrize("name, i", ALL_CASES)
def test_vjp_and_jvp_are_adjoint(name, i):
    op, arrays, params, rng = build(name, i)
    out = op.forward(*arrays, **params)
    g = rng.standard_normal(out.shape)
    tangents = [rng.standard_normal(x.shape) for x in arrays]
    via_jvp = np.sum(g * op.jvp(tangents, out, *arrays, **params))
    via_vjp = sum(np.sum(gr * t) for gr, t in zip(op.vjp(g, out, *arrays, **params), tangents))
    np.testing.assert_allclose(via_jvp, via_vjp, rtol=ADJOINT_RTOL, atol=ADJOINT_ATOL)


@pytest.mark.parametrize("name, i", ALL_CASES)
def test_float32_in_float32_out(name, i):
    op, arrays, params, rng = build(name, i)
    arrays = [x.astype(np.float32) for x in arrays]
    if name == "cast":
        params = dict(params, dtype=np.float32)
    out = op.forward(*arrays, **params)
    assert out.dtype == np.float32
    g = rng.standard_normal(out.shape).astype(np.float32)
    assert all(gr.dtype == np.float32 for gr in op.vjp(g, out, *arrays, **params))
    tangents = [np.ones_like(x) for x in arrays]
    assert op.jvp(tangents, out, *arrays, **params).dtype == np.float32


def test_outputs_never_alias_inputs():
    x = np.arange(6.0)
    for name, params in [("reshape", {"shape": (2, 3)}), ("getitem", {"index": slice(1, 4)}),
                         ("broadcast_to", {"shape": (2, 6)}), ("transpose", {})]:
        out = REFERENCE[name].forward(x, **params)
        assert not np.shares_memory(out, x), name
        assert out.flags.writeable, name


# ---------------------------------------------------------------------------------------------
# Named rules
# ---------------------------------------------------------------------------------------------
def test_maximum_minimum_ties_split_equally():
    x = np.array([1.0, -2.0, 3.0])
    for name in ("maximum", "minimum"):
        op = REFERENCE[name]
        out = op.forward(x, x)
        ga, gb = op.vjp(np.ones(3), out, x, x)
        np.testing.assert_array_equal(ga, [0.5, 0.5, 0.5])
        np.testing.assert_array_equal(gb, [0.5, 0.5, 0.5])
        # JVP, the adjoint: the tied tangents average.
        np.testing.assert_array_equal(op.jvp((np.full(3, 2.0), np.zeros(3)), out, x, x),
                                      [1.0, 1.0, 1.0])
    # Mixed: tie at index 1 only, and broadcasting: b's single element collects from every tie.
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0])
    ga, gb = REFERENCE["maximum"].vjp(np.ones(3), REFERENCE["maximum"].forward(a, b), a, b)
    np.testing.assert_array_equal(ga, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(gb, [1.5])


def test_max_min_reductions_split_ties_equally():
    x = np.array([3.0, 3.0, 1.0])
    op = REFERENCE["max"]
    (gx,) = op.vjp(np.array(1.0), op.forward(x), x)
    np.testing.assert_array_equal(gx, [0.5, 0.5, 0.0])
    op = REFERENCE["min"]
    y = np.array([[2.0, 1.0, 1.0, 1.0], [5.0, 4.0, 6.0, 7.0]])
    (gy,) = op.vjp(np.array([3.0, 2.0]), op.forward(y, axis=1), y, axis=1)
    np.testing.assert_array_equal(gy, [[0.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 0.0]])
    np.testing.assert_array_equal(
        op.jvp((np.array([[0.0, 3.0, 6.0, 9.0], [1.0, 2.0, 3.0, 4.0]]),), op.forward(y, axis=1),
               y, axis=1),
        [6.0, 2.0])


def test_abs_and_relu_have_zero_derivative_at_zero():
    x = np.array([-1.0, 0.0, 2.0])
    (g_abs,) = REFERENCE["abs"].vjp(np.ones(3), np.abs(x), x)
    np.testing.assert_array_equal(g_abs, [-1.0, 0.0, 1.0])
    (g_relu,) = REFERENCE["relu"].vjp(np.ones(3), np.maximum(x, 0), x)
    np.testing.assert_array_equal(g_relu, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(REFERENCE["relu"].jvp((np.ones(3),), np.maximum(x, 0), x),
                                  [0.0, 0.0, 1.0])


# (op, inputs, params): each has a local derivative that is inf or NaN at the first element.
SINGULAR = [
    ("sqrt", [np.array([0.0, 4.0])], {}),
    ("log", [np.array([0.0, 2.0])], {}),
    ("power_scalar", [np.array([0.0, 4.0])], {"p": 0.5}),
    ("power", [np.array([0.0, 4.0]), np.array([0.5, 0.5])], {}),
    ("divide", [np.array([1.0, 1.0]), np.array([0.0, 2.0])], {}),
    ("exp", [np.array([1000.0, 0.0])], {}),
    ("abs", [np.array([np.nan, 1.0])], {}),
    ("multiply", [np.array([np.inf, 1.0]), np.array([2.0, 3.0])], {}),
    ("log1p", [np.array([-1.0, 1.0])], {}),
    ("log2", [np.array([0.0, 2.0])], {}),
    ("log10", [np.array([0.0, 2.0])], {}),
    ("reciprocal", [np.array([0.0, 2.0])], {}),
    ("expm1", [np.array([1000.0, 0.0])], {}),
    ("exp2", [np.array([2000.0, 0.0])], {}),
    ("sinh", [np.array([1000.0, 0.0])], {}),
    ("cosh", [np.array([1000.0, 0.0])], {}),
    ("arcsin", [np.array([1.0, 0.5])], {}),
    ("arccos", [np.array([-1.0, 0.5])], {}),
    ("arccosh", [np.array([1.0, 2.0])], {}),
    ("arctanh", [np.array([1.0, 0.5])], {}),
    ("leaky_relu", [np.array([np.nan, 1.0])], {}),
    ("elu", [np.array([np.nan, -1.0])], {}),
    ("hardtanh", [np.array([np.nan, 0.5])], {}),
    ("logaddexp", [np.array([np.inf, 1.0]), np.array([np.inf, 2.0])], {}),
    ("arctan2", [np.array([0.0, 1.0]), np.array([0.0, 2.0])], {}),
    ("hypot", [np.array([0.0, 1.0]), np.array([0.0, 2.0])], {}),
    ("mod", [np.array([1.0, 5.0]), np.array([0.0, 3.0])], {}),
]


@pytest.mark.parametrize("name, arrays, params", SINGULAR, ids=[s[0] for s in SINGULAR])
def test_nan_safety_zero_cotangent_contributes_exactly_zero(name, arrays, params):
    op = REFERENCE[name]
    out = op.forward(*arrays, **params)
    # Zero cotangent on the singular element: exactly 0 there, the ordinary value elsewhere.
    for grad in op.vjp(np.array([0.0, 1.0]), out, *arrays, **params):
        assert grad[0] == 0.0 and np.isfinite(grad[1])
    # Zero tangents everywhere: exactly zero output tangent, not NaN.
    zeros = [np.zeros_like(x) for x in arrays]
    np.testing.assert_array_equal(op.jvp(zeros, out, *arrays, **params), [0.0, 0.0])
    # A nonzero cotangent stays IEEE: some input's gradient is inf or NaN at the singular point.
    grads = op.vjp(np.array([1.0, 1.0]), out, *arrays, **params)
    assert any(not np.isfinite(grad[0]) for grad in grads)


def test_nan_safety_ieee_values_with_nonzero_cotangent():
    x = np.array([0.0])
    assert REFERENCE["sqrt"].vjp(np.array([1.0]), np.sqrt(x), x)[0][0] == np.inf
    assert REFERENCE["log"].vjp(np.array([2.0]), np.array([-np.inf]), x)[0][0] == np.inf
    ga, gb = REFERENCE["divide"].vjp(np.array([1.0]), np.array([np.inf]), np.array([1.0]), x)
    assert ga[0] == np.inf and gb[0] == -np.inf
    # where(x > 0, sqrt(x), 0): the masked branch receives a zero cotangent, so the gradient
    # through sqrt at 0 is 0, not NaN.
    x = np.array([0.0, 4.0])
    cond = x > 0
    s = REFERENCE["sqrt"].forward(x)
    out = REFERENCE["where"].forward(s, np.zeros(2), cond=cond)
    g_s, _ = REFERENCE["where"].vjp(np.ones(2), out, s, np.zeros(2), cond=cond)
    (g_x,) = REFERENCE["sqrt"].vjp(g_s, s, x)
    np.testing.assert_array_equal(g_x, [0.0, 0.25])


def test_power_exponent_gradient_is_zero_at_zero_base():
    x, y = np.array([0.0, 0.0, 2.0]), np.array([2.0, 0.0, 3.0])
    out = REFERENCE["power"].forward(x, y)
    gx, gy = REFERENCE["power"].vjp(np.ones(3), out, x, y)
    np.testing.assert_array_equal(gy, [0.0, 0.0, 8.0 * np.log(2.0)])
    # d/dx is 0 where the exponent is 0 (x^0 is constant), even at x = 0.
    np.testing.assert_array_equal(gx, [0.0, 0.0, 12.0])
    (g,) = REFERENCE["power_scalar"].vjp(np.ones(3), np.ones(3), np.array([0.0, 1.0, 5.0]), p=0)
    np.testing.assert_array_equal(g, [0.0, 0.0, 0.0])


def test_clip_passes_gradient_on_the_closed_interval():
    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    op = REFERENCE["clip"]
    (g,) = op.vjp(np.ones(5), op.forward(x, -0.5, 0.5), x, -0.5, 0.5)
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])


def test_getitem_repeated_indices_accumulate():
    x = np.arange(4.0)
    op = REFERENCE["getitem"]
    index = (np.array([0, 0, 2, 0]),)
    (g,) = op.vjp(np.array([1.0, 2.0, 3.0, 4.0]), op.forward(x, index), x, index)
    np.testing.assert_array_equal(g, [7.0, 0.0, 3.0, 0.0])


def test_softmax_family_is_stable_at_plus_minus_1000():
    x = np.array([[1000.0, -1000.0, 0.0], [1000.0, 1000.0, -1000.0]])
    shifted = x - 1000.0  # softmax and log_softmax are shift invariant along the axis
    g = np.array([[0.3, -1.0, 2.0], [1.0, 0.5, -0.5]])
    for name in ("softmax", "log_softmax"):
        op = REFERENCE[name]
        out = op.forward(x)
        assert np.all(np.isfinite(out)), name
        np.testing.assert_allclose(out, op.forward(shifted), rtol=1e-15, atol=0)
        (grad,) = op.vjp(g, out, x)
        (grad_shifted,) = op.vjp(g, op.forward(shifted), shifted)
        assert np.all(np.isfinite(grad)), name
        np.testing.assert_allclose(grad, grad_shifted, rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(REFERENCE["softmax"].forward(x)[1], [0.5, 0.5, 0.0], atol=0)
    np.testing.assert_allclose(REFERENCE["log_softmax"].forward(x)[0], [0.0, -2000.0, -1000.0])

    op = REFERENCE["logsumexp"]
    out = op.forward(x, axis=1)
    np.testing.assert_allclose(out, [1000.0, 1000.0 + np.log(2.0)], rtol=1e-15)
    (grad,) = op.vjp(np.ones(2), out, x, axis=1)
    np.testing.assert_allclose(grad, [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], atol=1e-300)
    np.testing.assert_array_equal(op.forward(np.array([-np.inf, -np.inf])), -np.inf)

    op = REFERENCE["sigmoid"]
    s = op.forward(np.array([-1000.0, 1000.0]))
    np.testing.assert_array_equal(s, [0.0, 1.0])
    np.testing.assert_array_equal(op.vjp(np.ones(2), s, np.array([-1000.0, 1000.0]))[0], [0, 0])


def test_reductions_follow_numpy_axis_rules():
    x = np.arange(24.0).reshape(2, 3, 4)
    for name in ("sum", "mean", "max", "min"):
        op = REFERENCE[name]
        np.testing.assert_array_equal(op.forward(x, axis=()), x)  # reduces nothing
        np.testing.assert_array_equal(op.forward(x, axis=(-1, 0)),
                                      getattr(np, name)(x, axis=(0, 2)))
        np.testing.assert_array_equal(op.vjp(np.ones((2, 3, 4)), x, x, axis=())[0],
                                      np.ones((2, 3, 4)))
    with pytest.raises(np.exceptions.AxisError):
        REFERENCE["sum"].forward(x, axis=3)
    with pytest.raises(ValueError):
        REFERENCE["sum"].forward(x, axis=(1, -2))


def test_mixed_dtypes_promote_and_gradients_keep_input_dtype():
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = np.array([3.0, 4.0])
    op = REFERENCE["multiply"]
    out = op.forward(a, b)
    assert out.dtype == np.float64
    ga, gb = op.vjp(np.ones(2), out, a, b)
    assert ga.dtype == np.float32 and gb.dtype == np.float64
    np.testing.assert_array_equal(ga, [3.0, 4.0])
    # cast: the gradient comes back in the source dtype, whichever way the cast went.
    (g,) = REFERENCE["cast"].vjp(np.ones(2, np.float64), b.astype(np.float64), a, dtype=np.float64)
    assert g.dtype == np.float32
    (g,) = REFERENCE["cast"].vjp(np.ones(2, np.float32), a, b, dtype=np.float32)
    assert g.dtype == np.float64


def test_unbroadcast_sums_over_broadcast_axes():
    g = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(unbroadcast(g, (3, 4)), g.sum(axis=0))
    np.testing.assert_array_equal(unbroadcast(g, (3, 1)), g.sum(axis=(0, 2))[:, None])
    np.testing.assert_array_equal(unbroadcast(g, ()), g.sum())
    np.testing.assert_array_equal(unbroadcast(g, (2, 3, 4)), g)
    with pytest.raises(ValueError):
        unbroadcast(np.ones(3), (2, 3))


def test_zero_safe_is_the_nan_safety_rule():
    g = np.array([0.0, 0.0, 1.0, 1.0, -0.0])
    local = np.array([np.inf, np.nan, np.inf, np.nan, 2.0])
    out = zero_safe(g, local)
    np.testing.assert_array_equal(out[:2], [0.0, 0.0])
    assert out[2] == np.inf and np.isnan(out[3]) and out[4] == 0.0


def test_jvp_accepts_none_for_a_zero_tangent():
    a, b = np.array([1.0, 2.0]), np.array([3.0, 5.0])
    op = REFERENCE["multiply"]
    np.testing.assert_array_equal(op.jvp((None, np.ones(2)), op.forward(a, b), a, b), a)


# Broadcasting shapes beyond the hand-picked cases: the VJP of every broadcasting binary op has
# the input's shape and is adjoint to the JVP.
BINARY = ["add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "logaddexp",
          "arctan2", "hypot", "floor_divide", "mod"]


@settings(max_examples=60, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=3),
       name=st.sampled_from(BINARY), seed=st.integers(0, 2**32 - 1))
def test_binary_ops_on_random_broadcast_shapes(shapes, name, seed):
    rng = np.random.default_rng(seed)
    shape_a, shape_b = shapes.input_shapes
    a, b = positive(rng, shape_a), positive(rng, shape_b)
    op = REFERENCE[name]
    out = op.forward(a, b)
    assert out.shape == shapes.result_shape
    g = rng.standard_normal(out.shape)
    ta, tb = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    ga, gb = op.vjp(g, out, a, b)
    assert ga.shape == shape_a and gb.shape == shape_b
    via_jvp = np.sum(g * op.jvp((ta, tb), out, a, b))
    np.testing.assert_allclose(via_jvp, np.sum(ga * ta) + np.sum(gb * tb), rtol=ADJOINT_RTOL,
                               atol=ADJOINT_ATOL)


def test_nan_inputs_give_nan_gradients_and_route_through_maximum():
    # IEEE: a NaN input has a NaN local derivative, also for the kinked ops (abs, relu, clip,
    # leaky_relu, elu, hardtanh);
    # with a zero cotangent the NaN-safety rule still gives exactly 0.
    x = np.array([np.nan, 2.0])
    for name, params in [("abs", {}), ("relu", {}), ("clip", {"lo": -1.0, "hi": 1.0}),
                         ("leaky_relu", {}), ("elu", {}), ("hardtanh", {})]:
        op = REFERENCE[name]
        out = op.forward(x, **params)
        assert np.isnan(out[0]), name
        (g,) = op.vjp(np.ones(2), out, x, **params)
        assert np.isnan(g[0]), name
        (g,) = op.vjp(np.array([0.0, 1.0]), out, x, **params)
        assert g[0] == 0.0, name
    # maximum/minimum return the NaN operand, so the NaN operand receives the cotangent; the max
    # reduction does the same: the NaN elements share it.
    a, b = np.array([np.nan, 1.0]), np.array([3.0, np.nan])
    for name in ("maximum", "minimum"):
        op = REFERENCE[name]
        ga, gb = op.vjp(np.array([2.0, 5.0]), op.forward(a, b), a, b)
        np.testing.assert_array_equal(ga, [2.0, 0.0])
        np.testing.assert_array_equal(gb, [0.0, 5.0])
    y = np.array([1.0, np.nan, 3.0, np.nan])
    (gy,) = REFERENCE["max"].vjp(np.array(1.0), REFERENCE["max"].forward(y), y)
    np.testing.assert_array_equal(gy, [0.0, 0.5, 0.0, 0.5])


# ---------------------------------------------------------------------------------------------
# Named rules of the activation, rounding and two-argument ops
# ---------------------------------------------------------------------------------------------
def test_reciprocal_at_zero_is_inf_with_derivative_minus_inf():
    x = np.array([0.0, -0.0, 2.0])
    op = REFERENCE["reciprocal"]
    out = op.forward(x)
    np.testing.assert_array_equal(out, [np.inf, -np.inf, 0.5])
    (g,) = op.vjp(np.ones(3), out, x)
    np.testing.assert_array_equal(g, [-np.inf, -np.inf, -0.25])
    np.testing.assert_array_equal(op.jvp((np.ones(3),), out, x), [-np.inf, -np.inf, -0.25])
    # 1 / x, not np.reciprocal's integer truncation.
    np.testing.assert_array_equal(op.forward(np.array([2, 4])), [0.5, 0.25])


def test_leaky_relu_elu_hardtanh_kinks():
    x = np.array([-2.0, 0.0, 3.0])
    ones = np.ones(3)
    # leaky_relu'(0) = negative_slope (PyTorch's rule), in the VJP and the JVP alike.
    op = REFERENCE["leaky_relu"]
    for params, slope in [({}, 0.01), ({"negative_slope": 0.2}, 0.2)]:
        out = op.forward(x, **params)
        np.testing.assert_array_equal(out, [-2.0 * slope, 0.0, 3.0])
        np.testing.assert_array_equal(op.vjp(ones, out, x, **params)[0], [slope, slope, 1.0])
        np.testing.assert_array_equal(op.jvp((ones,), out, x, **params), [slope, slope, 1.0])
    # elu'(0) = alpha exp(0) = alpha: the x <= 0 branch.
    op = REFERENCE["elu"]
    out = op.forward(x, alpha=0.5)
    np.testing.assert_allclose(out, [0.5 * np.expm1(-2.0), 0.0, 3.0], rtol=1e-15, atol=0)
    np.testing.assert_allclose(op.vjp(ones, out, x, alpha=0.5)[0], [0.5 * np.exp(-2.0), 0.5, 1.0],
                               rtol=1e-15, atol=0)
    # elu uses expm1: accurate for tiny negative x, where exp(x) - 1 loses every digit.
    np.testing.assert_allclose(op.forward(np.array([-1e-20])), [-1e-20], rtol=1e-15)
    # hardtanh: derivative 1 strictly inside, 0 at the bounds (unlike clip) and outside.
    op = REFERENCE["hardtanh"]
    y = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    out = op.forward(y)
    np.testing.assert_array_equal(out, [-1.0, -1.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(op.vjp(np.ones(5), out, y)[0], [0.0, 0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(op.jvp((np.ones(5),), out, y), [0.0, 0.0, 1.0, 0.0, 0.0])
    (g_clip,) = REFERENCE["clip"].vjp(np.ones(5), out, y, -1.0, 1.0)
    np.testing.assert_array_equal(g_clip, [0.0, 1.0, 1.0, 1.0, 0.0])
    z = np.array([-0.5, 0.25, 0.5])
    np.testing.assert_array_equal(
        op.vjp(np.ones(3), op.forward(z, min_val=-0.5, max_val=0.5), z, min_val=-0.5,
               max_val=0.5)[0], [0.0, 1.0, 0.0])


ZERO_GRADIENT_UNARY = ["sign", "floor", "ceil", "round", "trunc"]


@pytest.mark.parametrize("name", ZERO_GRADIENT_UNARY)
def test_piecewise_constant_ops_have_exactly_zero_gradient(name):
    op = REFERENCE[name]
    for dtype in (np.float64, np.float32):
        x = np.array([[np.nan, np.inf, -np.inf], [0.0, -1.5, 2.5]], dtype=dtype)
        out = op.forward(x)
        # Exact +0, even for an inf or NaN cotangent or tangent and at inf/NaN inputs: zeros, not
        # g * 0 (which would be NaN, or -0 for a negative g).
        nasty = np.array([[np.nan, np.inf, -np.inf], [-1.0, np.nan, -np.inf]], dtype=dtype)
        (g,) = op.vjp(nasty, out, x)
        t = op.jvp((nasty,), out, x)
        for r in (g, t):
            assert r.shape == x.shape and r.dtype == dtype
            np.testing.assert_array_equal(r, np.zeros_like(x))
            assert not np.any(np.signbit(r))


def test_rounding_forwards_follow_numpy():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.7, 0.7, np.nan])
    # round is NumPy's half to even (as PyTorch), not half away from zero.
    np.testing.assert_array_equal(REFERENCE["round"].forward(x),
                                  [-2.0, -2.0, -0.0, 0.0, 2.0, 2.0, -1.0, 1.0, np.nan])
    np.testing.assert_array_equal(REFERENCE["floor"].forward(x),
                                  [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, -1.0, 0.0, np.nan])
    np.testing.assert_array_equal(REFERENCE["ceil"].forward(x),
                                  [-2.0, -1.0, -0.0, 1.0, 2.0, 3.0, -0.0, 1.0, np.nan])
    np.testing.assert_array_equal(REFERENCE["trunc"].forward(x),
                                  [-2.0, -1.0, -0.0, 0.0, 1.0, 2.0, -0.0, 0.0, np.nan])
    np.testing.assert_array_equal(REFERENCE["sign"].forward(np.array([-3.0, 0.0, 2.0, np.nan])),
                                  [-1.0, 0.0, 1.0, np.nan])


def test_floor_divide_and_mod():
    a = np.array([[7.0], [-7.0]])
    b = np.array([3.0, -3.0])
    # mod takes the sign of the divisor (Python's %); floor_divide rounds toward -inf.
    np.testing.assert_array_equal(REFERENCE["mod"].forward(a, b), [[1.0, -2.0], [2.0, -1.0]])
    np.testing.assert_array_equal(REFERENCE["floor_divide"].forward(a, b),
                                  [[2.0, -3.0], [-3.0, 2.0]])
    # mod: d/da = 1, d/db = -floor(a / b); broadcasting undone by the wrapper.
    op = REFERENCE["mod"]
    out = op.forward(a, b)
    ga, gb = op.vjp(np.ones((2, 2)), out, a, b)
    np.testing.assert_array_equal(ga, [[2.0], [2.0]])
    np.testing.assert_array_equal(gb, [-2.0 + 3.0, 3.0 - 2.0])
    np.testing.assert_array_equal(op.jvp((np.zeros((2, 1)), np.ones(2)), out, a, b),
                                  [[-2.0, 3.0], [3.0, -2.0]])
    # floor_divide: exactly zero gradients of each input's shape, whatever the cotangent.
    op = REFERENCE["floor_divide"]
    out = op.forward(a, b)
    nasty = np.array([[np.nan, np.inf], [-1.0, -np.inf]])
    ga, gb = op.vjp(nasty, out, a, b)
    assert ga.shape == a.shape and gb.shape == b.shape
    for r in (ga, gb, op.jvp((nasty[:, :1], nasty[0]), out, a, b)):
        np.testing.assert_array_equal(r, np.zeros_like(r))
        assert not np.any(np.signbit(r))


def test_two_argument_ops_at_the_origin_and_at_infinity():
    zero = np.array([0.0])
    for name in ("arctan2", "hypot"):  # 0 / 0 in both derivatives
        op = REFERENCE[name]
        grads = op.vjp(np.ones(1), op.forward(zero, zero), zero, zero)
        assert all(np.isnan(g[0]) for g in grads), name
    # arctan2(a, b) is the angle of (x=b, y=a).
    a, b = np.array([1.0, 1.0, -1.0]), np.array([1.0, -1.0, 0.0])
    op = REFERENCE["arctan2"]
    out = op.forward(a, b)
    np.testing.assert_allclose(out, [np.pi / 4, 3 * np.pi / 4, -np.pi / 2], rtol=1e-15)
    ga, gb = op.vjp(np.ones(3), out, a, b)
    np.testing.assert_array_equal(ga, [0.5, -0.5, 0.0])
    np.testing.assert_array_equal(gb, [-0.5, -0.5, 1.0])
    # hypot: the derivative is the unit vector (a, b) / |(a, b)|.
    a, b = np.array([3.0, 1e200]), np.array([4.0, 1e200])
    op = REFERENCE["hypot"]
    out = op.forward(a, b)
    ga, gb = op.vjp(np.ones(2), out, a, b)
    np.testing.assert_allclose(ga, [0.6, np.sqrt(0.5)], rtol=1e-15)
    np.testing.assert_allclose(gb, [0.8, np.sqrt(0.5)], rtol=1e-15)


def test_logaddexp_softplus_silu_are_stable_at_plus_minus_1000():
    big = np.array([1000.0, -1000.0])
    op = REFERENCE["logaddexp"]
    a, b = np.array([1000.0, -1000.0, 1000.0]), np.array([-1000.0, 1000.0, 1000.0])
    out = op.forward(a, b)
    np.testing.assert_allclose(out, [1000.0, 1000.0, 1000.0 + np.log(2.0)], rtol=1e-15)
    ga, gb = op.vjp(np.ones(3), out, a, b)
    np.testing.assert_array_equal(ga, [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(gb, [0.0, 1.0, 0.5])

    op = REFERENCE["softplus"]
    out = op.forward(big)
    np.testing.assert_array_equal(out, [1000.0, 0.0])
    np.testing.assert_array_equal(op.vjp(np.ones(2), out, big)[0], [1.0, 0.0])
    np.testing.assert_allclose(op.forward(np.array([0.0, -50.0])), [np.log(2.0), np.exp(-50.0)],
                               rtol=1e-15)  # the tiny side keeps its relative accuracy

    op = REFERENCE["silu"]
    out = op.forward(big)
    np.testing.assert_array_equal(out, [1000.0, 0.0])
    np.testing.assert_array_equal(op.vjp(np.ones(2), out, big)[0], [1.0, 0.0])


def test_erf_and_gelu_closed_forms():
    # erf: values from its Taylor series summed in 150-digit decimal arithmetic, and its symmetry.
    x = np.array([0.0, 0.5, 1.0, 2.0, np.inf, np.nan])
    np.testing.assert_allclose(REFERENCE["erf"].forward(x),
                               [0.0, 0.5204998778130465, 0.8427007929497149,
                                0.9953222650189527, 1.0, np.nan], rtol=1e-15)
    erf = REFERENCE["erf"].forward
    np.testing.assert_array_equal(erf(-x[:4]), -erf(x[:4]))
    assert REFERENCE["erf"].forward(np.float32(0.5)).dtype == np.float32
    (g,) = REFERENCE["erf"].vjp(np.ones(1), np.zeros(1), np.zeros(1))
    np.testing.assert_allclose(g, [2 / np.sqrt(np.pi)], rtol=1e-15)

    op = REFERENCE["gelu"]
    for approximate in ("none", "tanh"):
        # gelu(0) = 0 and gelu'(0) = 1/2 in both forms; gelu(x) - gelu(-x) = x.
        zero = np.zeros(1)
        np.testing.assert_array_equal(op.forward(zero, approximate=approximate), [0.0])
        np.testing.assert_array_equal(op.vjp(np.ones(1), zero, zero, approximate=approximate)[0],
                                      [0.5])
        y = np.linspace(-4.0, 4.0, 17)
        np.testing.assert_allclose(op.forward(y, approximate=approximate)
                                   - op.forward(-y, approximate=approximate), y,
                                   rtol=1e-14, atol=1e-15)
    # none: x Phi(x), with Phi(1) = 0.8413447460685429 and Phi(-10) = 7.619853024160525e-24 (the
    # same 150-digit series): the lower tail keeps its relative accuracy (1 + erf would give 0).
    np.testing.assert_allclose(op.forward(np.array([1.0, -10.0])),
                               [0.8413447460685429, -7.619853024160525e-23], rtol=1e-13)
    # tanh approximates none to within 4.8e-4: its largest error, 4.73e-4 near |x| = 2.7, measured
    # on a 1e-4 grid over [-10, 10]. A wrong constant in either form errs by far more.
    y = np.linspace(-6.0, 6.0, 1201)
    gap = op.forward(y, approximate="tanh") - op.forward(y)
    assert np.max(np.abs(gap)) < 4.8e-4
    with pytest.raises(ValueError, match="approximate"):
        op.forward(y, approximate="erf")
