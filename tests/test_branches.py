"""Gradients accumulate at branches, whatever the consumers: one value used by two consumers of
every op family, through every sweep that adds contributions up.

A contribution reaches an adjoint by one of several paths in csrc/sweep.c: written by the kernel
straight into the adjoint (accumulating when something is already there), or formed in an
output-shaped scratch buffer that is then summed over the broadcast axes (where, matmul's batch
axes, broadcast_to, ...), or handed over as a buffer (add, subtract), or kept as one value (a
scalar sum or mean), and each sweep has its own copy of the logic: backward into .grad and into
interior adjoints, the batched numeric reverse sweep (vjp, jacrev), the recorded sweeps (higher
order), and hvp's forward-over-reverse. A planted bug that drops or doubles a contribution on one
path passed every binary-op branching test (binary ops sum broadcasts inside their kernel), so
here every consumer below meets every path, in both orders (the later consumer is swept first,
so each takes the accumulating side once), on a leaf and on an interior value.

Expected gradients come from the NumPy reference (pyautodiff/reference), op by op: the
gradient of sum(w1 * c1(x)) + sum(w2 * c2(x)) is vjp_c1(w1) + vjp_c2(w2).
"""
from dataclasses import dataclass, field

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff.reference import REFERENCE

SHAPE = (2, 3, 4)
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}
X = object()   # stands for the shared value among a consumer's operands


def _x_values(dtype):
    # rounded to halves, so that max/min have ties along every axis
    rng = np.random.default_rng(3)
    return (np.round(rng.uniform(-1, 1, SHAPE) * 2) / 2).astype(dtype)


COND = np.random.default_rng(4).random((5,) + SHAPE) < 0.5
INDEX = np.array([1, 0, 1, 1])
ELEMENTS = np.array([3, 0, 3])


@ad.custom_vjp
def cube(x):
    """x ** 3 with its own rule: the sweep adds its contribution from the bindings (custom.c)"""
    return x * x * x


cube.defvjp(lambda x: (cube(x), (x,)), lambda res, g: (g * 3.0 * res[0] * res[0],))


@dataclass
class Consumer:
    label: str
    op: str                                  # reference op
    operands: tuple                          # X for the shared value, else a constant array
    call: object                             # the library call on the operands
    params: dict = field(default_factory=dict)
    smooth: bool = True                      # differentiable twice (no ties, no kinks)


def _const(shape, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape)


CONSUMERS = [
    Consumer("tanh", "tanh", (X,), ad.tanh),
    Consumer("x*x", "multiply", (X, X), lambda p, q: p * q),
    Consumer("binary broadcast", "multiply", (X, _const((5, 1, 1, 1), 1)), lambda p, q: p * q),
    Consumer("where broadcast", "where", (X, _const((5,) + SHAPE, 2)), lambda p, q: ad.where(COND, p, q),
             {"cond": COND}),
    Consumer("where both sides", "where", (X, X), lambda p, q: ad.where(COND[0], p, q), {"cond": COND[0]}),
    Consumer("sum axis", "sum", (X,), lambda p: ad.sum(p, axis=1), {"axis": 1}),
    Consumer("sum kept inner axis", "sum", (X,), lambda p: ad.sum(p, axis=0), {"axis": 0}),
    Consumer("mean keepdims", "mean", (X,), lambda p: ad.mean(p, axis=(0, 2), keepdims=True),
             {"axis": (0, 2), "keepdims": True}),
    Consumer("max ties", "max", (X,), lambda p: ad.max(p, axis=2), {"axis": 2}, smooth=False),
    Consumer("min all", "min", (X,), ad.min, smooth=False),
    Consumer("matmul batched weight", "matmul", (_const((3, 1, 5, 3), 5), X), lambda p, q: p @ q),
    Consumer("matmul batched left", "matmul", (X, _const((1, 4, 2), 6)), lambda p, q: p @ q),
    Consumer("matmul weight", "matmul", (_const((7, 3), 7), X), lambda p, q: p @ q),
    Consumer("transpose", "transpose", (X,), lambda p: ad.transpose(p, (2, 0, 1)), {"axes": (2, 0, 1)}),
    Consumer("reshape", "reshape", (X,), lambda p: ad.reshape(p, (6, 4)), {"shape": (6, 4)}),
    Consumer("broadcast_to", "broadcast_to", (X,), lambda p: ad.broadcast_to(p, (3,) + SHAPE),
             {"shape": (3,) + SHAPE}),
    Consumer("gather repeats", "getitem", (X,), lambda p: p[INDEX], {"index": INDEX}),
    Consumer("gather elements", "getitem", (X,), lambda p: p[..., ELEMENTS], {"index": (Ellipsis, ELEMENTS)}),
    Consumer("slice", "getitem", (X,), lambda p: p[:, 1:3, ::2],
             {"index": (slice(None), slice(1, 3), slice(None, None, 2))}),
    Consumer("softmax last", "softmax", (X,), lambda p: ad.softmax(p, axis=-1), {"axis": -1}),
    Consumer("softmax middle", "softmax", (X,), lambda p: ad.softmax(p, axis=1), {"axis": 1}),
    Consumer("softmax split axes", "softmax", (X,), lambda p: ad.softmax(p, axis=(0, 2)), {"axis": (0, 2)}),
    Consumer("log_softmax", "log_softmax", (X,), lambda p: ad.log_softmax(p, axis=0), {"axis": 0}),
    Consumer("logsumexp", "logsumexp", (X,), lambda p: ad.logsumexp(p, axis=2), {"axis": 2}),
    Consumer("concatenate self", "concatenate", (X, X), lambda p, q: ad.concatenate([p, q], axis=1), {"axis": 1}),
    Consumer("stack last", "stack", (X, _const(SHAPE, 8)), lambda p, q: ad.stack([p, q], axis=-1), {"axis": -1}),
    Consumer("custom_vjp", "power_scalar", (X,), cube, {"p": 3.0}),
    Consumer("clip", "clip", (X,), lambda p: ad.clip(p, -0.5, 0.5), {"lo": -0.5, "hi": 0.5}, smooth=False),
]
BY_LABEL = {c.label: c for c in CONSUMERS}


def _weights(c, x, seed):
    out = _ref_forward(c, x)
    return np.random.default_rng(seed).uniform(0.5, 1.5, out.shape).astype(x.dtype)


def _ref_args(c, x):
    return [x if a is X else a.astype(x.dtype) for a in c.operands]


def _ref_forward(c, x):
    with np.errstate(all="ignore"):
        return np.asarray(REFERENCE[c.op].forward(*_ref_args(c, x), **c.params))


def _ref_grad(c, x, w):
    """d/dx sum(w * c(x)) by the reference: the VJPs of every operand that is x, added."""
    args = _ref_args(c, x)
    grads = REFERENCE[c.op].vjp(w, _ref_forward(c, x), *args, **c.params)
    return sum(np.asarray(g, dtype=np.float64) for a, g in zip(c.operands, grads) if a is X)


def _apply(c, t):
    """c on the library side, with t as the shared value (constants as arrays of t's dtype)."""
    ops = [t if a is X else a.astype(t.dtype) for a in c.operands]
    if c.op == "matmul" and c.operands[0] is not X:
        ops[0] = ad.tensor(ops[0])   # a constant left operand: `array @ tensor` would be NumPy's
    return c.call(*ops)


def _loss_fn(pair, ws):
    def f(t):
        total = None
        for c, w in zip(pair, ws):
            term = ad.sum(_apply(c, t) * w)
            total = term if total is None else total + term
        return total
    return f


def _case(labels, dtype):
    pair = [BY_LABEL[l] for l in labels]
    x = _x_values(dtype)
    ws = [_weights(c, x, 10 + i) for i, c in enumerate(pair)]
    expected = sum(_ref_grad(c, x, w) for c, w in zip(pair, ws))
    return pair, x, ws, expected


PARTNERS = ["tanh", "where broadcast", "matmul batched weight"]
PAIRS = sorted({(c.label, p) for c in CONSUMERS for p in [c.label] + PARTNERS}
               | {(p, c.label) for c in CONSUMERS for p in PARTNERS})


@pytest.mark.parametrize("interior", [False, True], ids=["leaf", "interior"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("labels", PAIRS, ids=[f"{a}+{b}".replace(" ", "_") for a, b in PAIRS])
def test_backward_adds_both_consumers(labels, dtype, interior):
    pair, x, ws, expected = _case(labels, dtype)
    leaf = ad.tensor(x / 2 if interior else x, requires_grad=True)
    v = leaf * 2.0 if interior else leaf          # an interior value: its adjoint is not .grad
    _loss_fn(pair, ws)(v).backward()
    np.testing.assert_allclose(leaf.grad.numpy(), expected * (2 if interior else 1), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("labels", PAIRS, ids=[f"{a}+{b}".replace(" ", "_") for a, b in PAIRS])
def test_transforms_add_both_consumers(labels, dtype):
    """The batched reverse sweep (grad, jacrev), the recorded one (grad under jvp) and forward
    mode (jvp: <grad, v>) over the same branches."""
    pair, x, ws, expected = _case(labels, dtype)
    f = _loss_fn(pair, ws)
    tol = TOL[dtype]
    np.testing.assert_allclose(ad.grad(f)(x).numpy(), expected, **tol)
    # two cotangent rows at once: jacrev of [f, 3 f]
    rows = ad.jacrev(lambda t: ad.stack([f(t), f(t) * 3.0]))(x).numpy()
    np.testing.assert_allclose(rows, np.stack([expected, 3 * expected]), **tol)
    v = np.random.default_rng(9).uniform(-1, 1, SHAPE).astype(dtype)
    g_rec, _ = ad.jvp(ad.grad(f), (x,), (v,))
    np.testing.assert_allclose(g_rec.numpy(), expected, **tol)
    _, df = ad.jvp(f, (x,), (v,))
    np.testing.assert_allclose(df.numpy(), np.sum(expected * v), rtol=tol["rtol"] * 10,
                               atol=tol["atol"] * 10 * np.abs(expected * v).sum())


SMOOTH_PAIRS = [p for p in PAIRS if all(BY_LABEL[l].smooth for l in p)]


@pytest.mark.parametrize("labels", SMOOTH_PAIRS, ids=[f"{a}+{b}".replace(" ", "_") for a, b in SMOOTH_PAIRS])
def test_hvp_of_branches_matches_differences_of_the_reference_gradient(labels):
    """hvp (forward over reverse, one C sweep) and hvp recorded (under an outer grad) against
    central differences of the reference gradient along v: the second-order terms and the
    first-order ones of the tangent rows add up at the branches too."""
    pair, x, ws, _ = _case(labels, np.float64)
    f = _loss_fn(pair, ws)
    v = np.random.default_rng(11).uniform(-1, 1, SHAPE)
    h = 1e-5

    def ref_grad(at):
        return sum(_ref_grad(c, at, w) for c, w in zip(pair, ws))

    expected = (ref_grad(x + h * v) - ref_grad(x - h * v)) / (2 * h)
    scale = 1e-6 * (1 + np.abs(expected).max())
    _, (hv,) = ad.hvp(f, (x,), (v,))
    np.testing.assert_allclose(hv.numpy(), expected, rtol=1e-6, atol=scale)
    hv_rec = ad.jacfwd(ad.grad(f))(x).numpy().reshape(x.size, x.size) @ v.ravel()
    np.testing.assert_allclose(hv_rec.reshape(SHAPE), expected, rtol=1e-6, atol=scale)


# ---- the two cases of the issue, written out with their numbers ----

@pytest.mark.parametrize("w_shape", [(1, 2, 2), (2, 2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_shared_by_two_batched_matmuls(dtype, w_shape):
    """W meets two batched inputs: each contribution has the batch axis of its input and is
    summed over it (W (1, 2, 2): by the sweep, from a scratch; W (2, 2): by one gemm over all the
    batches' rows), and the second must add to the first."""
    W = ad.tensor(np.array([[1.0, 2.0], [3.0, 4.0]], dtype).reshape(w_shape), requires_grad=True)
    a = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], dtype)      # (2, 1, 2)
    b = np.array([[[1.0, 1.0]], [[2.0, -1.0]]], dtype)     # (2, 1, 2)
    loss = ad.sum(ad.tensor(a) @ W) + ad.sum((ad.tensor(b) @ W) * 2.0)
    loss.backward()
    # d/dW sum(a_t W) = sum_t a_t^T 1 = [[1, 1], [1, 1]]; for b, twice sum_t b_t^T 1 = [[6, 6], [0, 0]]
    np.testing.assert_array_equal(W.grad.numpy(), np.array([[7.0, 7.0], [1.0, 1.0]], dtype).reshape(w_shape))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_where_with_broadcasting_and_a_second_use(dtype):
    """x (2,) broadcast into where's (3, 2) output (its contribution summed over the new axis),
    and used again by an elementwise op."""
    x = ad.tensor(np.array([1.0, -2.0], dtype), requires_grad=True)
    cond = np.array([[True, False], [True, True], [False, True]])
    loss = ad.sum(ad.where(cond, x, 0.0)) + ad.sum(x * 3.0)
    loss.backward()
    # where routes column j's g to x[j] where cond is set: counts [2, 2]; x * 3 adds 3 each
    np.testing.assert_array_equal(x.grad.numpy(), np.array([5.0, 5.0], dtype))
    # the other order: the where contribution is the second to arrive
    x2 = ad.tensor(np.array([1.0, -2.0], dtype), requires_grad=True)
    y = x2 * 1.0
    loss2 = ad.sum(y * 3.0) + ad.sum(ad.where(cond, y, 0.0))
    loss2.backward()
    np.testing.assert_array_equal(x2.grad.numpy(), np.array([5.0, 5.0], dtype))


def test_max_ties_share_the_cotangent_in_every_sweep():
    """[1, 3, 3]: the two 3s share max's cotangent equally, in backward, in the batched reverse
    sweep, in forward mode (the mean of the winners' tangents) and in the recorded rule."""
    x = np.array([1.0, 3.0, 3.0])
    t = ad.tensor(x, requires_grad=True)
    ad.max(t).backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(ad.grad(ad.max)(x).numpy(), [0.0, 0.5, 0.5])
    _, tangent = ad.jvp(ad.max, (x,), (np.array([5.0, 1.0, 2.0]),))
    assert tangent.item() == 1.5
    g_rec, _ = ad.jvp(ad.grad(lambda v: ad.max(v) * 4.0), (x,), (np.ones(3),))
    np.testing.assert_array_equal(g_rec.numpy(), [0.0, 2.0, 2.0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_safety_of_clip_and_of_second_order_terms(dtype):
    """A zero cotangent (tangent) contributes exactly 0, also where the derivative is NaN or
    infinite: clip's VJP at a NaN input, and hvp's second-order term of sqrt at 0 (its
    coefficient -x^(-3/2) / 4 is -inf there) along a zero tangent."""
    x = ad.tensor(np.array([np.nan, 0.2, 3.0], dtype), requires_grad=True)
    ad.sum(ad.clip(x, -1.0, 1.0) * np.array([0.0, 2.0, 5.0], dtype)).backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.array([0.0, 2.0, 0.0], dtype))
    _, (hv,) = ad.hvp(lambda t: ad.sum(ad.sqrt(t)), (np.array([0.0, 1.0], dtype),), (np.array([0.0, 1.0], dtype),))
    np.testing.assert_array_equal(hv.numpy(), np.array([0.0, -0.25], dtype))
