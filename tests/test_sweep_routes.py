"""The reverse sweep's shortcuts give the same gradients as the plain route.

Four shortcuts save memory passes on large tensors (csrc/sweep.c): a binary op sums a broadcast
input's contribution while writing it (no output-sized scratch), `x op x` writes both
contributions in one pass, `a + b` / `a - b` hand their adjoint buffer down to an interior
input instead of copying it, and a scalar sum or mean gives its input one adjoint value instead
of an array of it (written out when anything else needs the array). The op table's samples are small, so these tests use sizes that run
the kernels' 8-way partial-sum loops (inner runs of at least 8) and the accumulate variants
(an input that already has an adjoint, a second backward), against the NumPy reference. That
anomaly mode gives the same bits through them is tested in test_anomaly.py.
"""
import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff import opdefs
from pyautodiff.reference import REFERENCE
from op_table import DOMAINS

DTYPES = [np.float64, np.float32]
# summing up to ~10^3 products: float32 rounding of the running terms, relative to the sum
TOL = {np.float64: (1e-12, 1e-12), np.float32: (2e-5, 2e-5)}
BINARY = [op.name for op in opdefs.BINARY if op.public]
# (shape of a, shape of b): broadcast along the inner run (the partial-sum loop, with and without
# a remainder), along outer axes (rows added one by one), and both at once
SHAPES = [
    ((1000,), ()), ((), (1003,)), ((3, 1), (3, 29)), ((37, 1), (1, 21)),
    ((2, 1, 19), (4, 1)), ((5, 1, 1), (5, 6, 7)), ((1, 16), (9, 16)),
]


def _inputs(name, sa, sb, dtype, seed=0):
    rng = np.random.default_rng(seed)
    domain = opdefs.BY_NAME[name].domain
    a, b = DOMAINS[domain[0]](rng, sa), DOMAINS[domain[-1]](rng, sb)
    if name in ("maximum", "minimum"):
        b = np.round(b, 1)          # some exact ties between a's and b's elements
        a = np.round(a, 1)
    return a.astype(dtype), b.astype(dtype)


def _reference_grads(name, a, b, g):
    ref = REFERENCE[name]
    return ref.vjp(g, ref.forward(a, b), a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", SHAPES, ids=[f"{a}x{b}" for a, b in SHAPES])
@pytest.mark.parametrize("name", BINARY)
def test_broadcast_input_summed_in_the_kernel(name, shapes, dtype):
    a, b = _inputs(name, *shapes, dtype)
    fn = getattr(ad, name)
    ta, tb = ad.tensor(a, requires_grad=True), ad.tensor(b, requires_grad=True)
    out = fn(ta, tb)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    out.backward(g, retain_graph=True)
    expected = _reference_grads(name, a, b, g)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(ta.grad.numpy(), expected[0], rtol=rtol, atol=atol)
    np.testing.assert_allclose(tb.grad.numpy(), expected[1], rtol=rtol, atol=atol)
    # the second backward adds into the grads: the accumulating variant of the same loops
    out.backward(g)
    np.testing.assert_allclose(ta.grad.numpy(), 2 * expected[0], rtol=rtol, atol=2 * atol)
    np.testing.assert_allclose(tb.grad.numpy(), 2 * expected[1], rtol=rtol, atol=2 * atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_interior_input_accumulates_from_two_consumers(dtype):
    rng = np.random.default_rng(2)
    xv, wv = rng.standard_normal((6, 40)).astype(dtype), rng.standard_normal((1, 40)).astype(dtype)
    x, w = ad.tensor(xv, requires_grad=True), ad.tensor(wv, requires_grad=True)
    h = w * 3.0                                   # interior, broadcast by both consumers below
    (ad.tanh(x * h).sum() + (h - x).sum()).backward()
    t = np.tanh(xv * 3 * wv)
    expected_w = 3.0 * (((1 - t * t) * xv).sum(axis=0, keepdims=True) + xv.shape[0])
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(w.grad.numpy(), expected_w, rtol=rtol, atol=atol)
    np.testing.assert_allclose(x.grad.numpy(), (1 - t * t) * 3 * wv - 1, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_same_tensor_on_both_sides(name, dtype):
    x, _ = _inputs(name, (3, 50), (), dtype, seed=3)
    if name == "power":
        x = np.abs(x) + 0.5
    fn = getattr(ad, name)
    t = ad.tensor(x, requires_grad=True)
    out = fn(t, t)
    g = np.random.default_rng(4).standard_normal(out.shape).astype(dtype)
    out.backward(g, retain_graph=True)
    ga, gb = _reference_grads(name, x, x, g)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(t.grad.numpy(), ga + gb, rtol=rtol, atol=atol)
    out.backward(g)
    np.testing.assert_allclose(t.grad.numpy(), 2 * (ga + gb), rtol=rtol, atol=2 * atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_tensor_on_both_sides_keeps_nan_safety(dtype):
    # x / x at 0 is NaN with an infinite local derivative; a zero cotangent there contributes
    # exactly zero through both sides at once, as it does through each side alone
    t = ad.tensor(np.array([0.0, 2.0], dtype), requires_grad=True)
    with np.errstate(all="ignore"):
        out = t / t
    out.backward(np.array([0.0, 1.0], dtype))
    np.testing.assert_array_equal(t.grad.numpy(), [0.0, 0.0])     # 1/x - x/x^2 = 0 at 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_and_subtract_hand_their_adjoint_down(dtype):
    rng = np.random.default_rng(5)
    xv, yv, cv = (rng.standard_normal(300).astype(dtype) for _ in range(3))
    x, y = ad.tensor(xv, requires_grad=True), ad.tensor(yv, requires_grad=True)
    a, b = x * 2.0, ad.exp(y)                     # interior inputs of the add and the subtract
    u = a + b                                     # a and b each take u's adjoint or a copy of it
    v = a - b                                     # processed first: hands its buffer to a
    loss = (u * cv).sum() + (v * v).sum()
    loss.backward()
    uv, vv = 2 * xv + np.exp(yv), 2 * xv - np.exp(yv)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(x.grad.numpy(), 2 * (cv + 2 * vv), rtol=rtol, atol=atol)
    np.testing.assert_allclose(y.grad.numpy(), np.exp(yv) * (cv - 2 * vv), rtol=rtol, atol=atol)
    assert loss.item() == pytest.approx(float((uv * cv).sum() + (vv * vv).sum()), rel=1e-5)


def test_handed_over_buffers_are_released():
    x = ad.tensor(np.ones(10_000), requires_grad=True)
    before = ad.tape_stats()
    for _ in range(3):
        h = (x * 2.0 + x * 3.0) - ad.exp(x)
        (h + h * 0.5).sum().backward()
        del h
        x.grad = None
    after = ad.tape_stats()
    assert (after["live_nodes"], after["live_bytes"]) == (before["live_nodes"], before["live_bytes"])


def test_batched_vjp_sums_broadcast_inputs_in_the_kernel():
    # jacrev runs the k-row reverse sweep, whose sink takes the same in-kernel reduction
    rng = np.random.default_rng(6)
    xv, bv = rng.standard_normal((4, 30)), rng.standard_normal(30)
    jac = ad.jacrev(lambda b: ad.tanh(xv * b).sum(axis=0) + b * b)(bv)
    t = np.tanh(xv * bv)
    expected = np.diag(((1 - t * t) * xv).sum(axis=0) + 2 * bv)
    np.testing.assert_allclose(np.asarray(jac), expected, rtol=1e-12, atol=1e-12)
    row = ad.jacrev(lambda b: (xv * b).sum(axis=1))(bv[:1])     # b of shape (1,): summed over 30
    np.testing.assert_allclose(np.asarray(row), xv.sum(axis=1, keepdims=True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("name", BINARY)
def test_scalar_reduction_passes_one_adjoint_value(name, reduce, dtype):
    a, b = _inputs(name, (3, 50), (3, 50), dtype, seed=8)
    ta, tb = ad.tensor(a, requires_grad=True), ad.tensor(b, requires_grad=True)
    out = getattr(ad, reduce)(getattr(ad, name)(ta, tb))
    out.backward(retain_graph=True)
    g = np.full(a.shape, 1.0 if reduce == "sum" else 1.0 / a.size, dtype)
    expected = _reference_grads(name, a, b, g)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(ta.grad.numpy(), expected[0], rtol=rtol, atol=atol)
    np.testing.assert_allclose(tb.grad.numpy(), expected[1], rtol=rtol, atol=atol)
    out.backward()
    np.testing.assert_allclose(ta.grad.numpy(), 2 * expected[0], rtol=rtol, atol=2 * atol)


@pytest.mark.parametrize("sum_first", [True, False])
def test_one_value_adjoint_is_written_out_when_another_consumer_adds(sum_first):
    rng = np.random.default_rng(9)
    xv, yv, cv = (rng.standard_normal((4, 30)) for _ in range(3))
    x, y = ad.tensor(xv, requires_grad=True), ad.tensor(yv, requires_grad=True)
    m = x * y
    terms = [ad.mean(m), (m * cv).sum()]     # the later one is swept first
    loss = terms[0] + terms[1] if sum_first else terms[1] + terms[0]
    loss.backward()
    gm = 1.0 / m.size + cv
    np.testing.assert_allclose(x.grad.numpy(), gm * yv, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(y.grad.numpy(), gm * xv, rtol=1e-13, atol=1e-15)
    # through paths that need the array: a broadcast input, x * x, an add that hands over
    w = ad.tensor(np.float64(0.5), requires_grad=True)
    for make, expected in [(lambda: ad.sum(x * w), xv.sum()), (lambda: ad.sum((x + 0.0) * (x + 0.0)), None),
                           (lambda: ad.sum(x * 2.0 + y), None)]:
        x.grad, w.grad = None, None
        make().backward()
        if expected is not None:
            assert w.grad.item() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(x.grad.numpy(), np.full(xv.shape, 2.0))
