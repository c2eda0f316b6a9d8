"""The scalar replay (csrc/scalar_replay.c): a plan's runs of one-element elementwise steps run as a
compact program by one interpreter loop instead of one kernel call per step.

The promise is replay.c's: the replay gives eager's bits. Checked on every elementwise op of
pyautodiff/opdefs.py in float32 and float64, forward and each derivative, at ordinary values and at
the edges (signed zeros, infinities, NaN), with zero and nonzero cotangents, first-written and
accumulated adjoints; and that the program is really what ran (plan_stats), that steps it does not
cover (tensors, broadcasting, other families, casts, fused regions) run as before in the same plan,
and that guards still fire.
"""
import warnings

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff import opdefs
from pyautodiff.ops import ROWS

DTYPES = [np.float64, np.float32]
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan]
DOMAIN_POINTS = {"normal": [-1.3, 0.7], "wide": [-3.1, 2.2], "positive": [0.6, 2.5], "nonzero": [-1.7, 0.8],
                 "unit": [-0.6, 0.4], "above1": [1.4, 3.0]}
# the constant of x op c, where c == 0 and c == 2 take their own branches (pow_scalar)
SCALAR_C = [2.5, -1.5, 0.0, 2.0, 0.5]


def _bits(t):
    a = np.asarray(t.numpy() if isinstance(t, ad.Tensor) else t)
    return a.dtype.str, a.shape, a.tobytes()


def _same(got, expected, what):
    assert _bits(got) == _bits(expected), (what, got, expected)


def _points(op, k):
    """Values for input k of op: its domain's, its edge values, and the special ones."""
    edges = []
    for e in op.edges:
        e = e[k] if op.kind == "binary" else e
        edges += list(np.ravel(e))
    return DOMAIN_POINTS[op.domain[min(k, len(op.domain) - 1)]] + edges[:4] + SPECIAL


def _param_sets(op):
    if "c" in op.params:
        return [{"c": c} for c in SCALAR_C]
    return [dict(op.params)] + [dict(p) for p in op.test_params]


def _inputs(op, dtype):
    with np.errstate(over="ignore"):       # edge values like 1e200 become inf in float32
        if op.kind == "unary":
            return [(np.asarray(x, dtype),) for x in _points(op, 0)]
        return [(np.asarray(a, dtype), np.asarray(b, dtype)) for a in _points(op, 0)[:7] for b in _points(op, 1)[:7]]


def _check(f, inputs, dtype, what, cotangents=(1.3, 0.0)):
    """Record f at the first inputs; at every inputs its replays (value, VJP for each cotangent)
    give eager's bits. Returns the recorded callable."""
    n = len(inputs[0])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")     # ops with a zero derivative warn alike in both paths
        tf = ad.record(f, *inputs[0], argnums=tuple(range(n)))
        for xs in inputs:
            out0, vjp0 = ad.vjp(f, *xs)
            out1, vjp1 = tf.vjp(*xs)
            _same(out1, out0, (what, xs, "value"))
            for g in cotangents:
                g = np.asarray(g, dtype)
                for j, (a, b) in enumerate(zip(vjp1(g), vjp0(g))):
                    _same(a, b, (what, xs, float(g), j))
    return tf


OPS = [pytest.param(op, p, id=f"{op.name}-{i}") for op in opdefs.ALL for i, p in enumerate(_param_sets(op))]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op,params", OPS)
def test_every_elementwise_op_replays_in_the_scalar_program_bit_for_bit(op, params, dtype):
    fn = ROWS[op.name]
    tf = _check(lambda *xs: fn(*xs, **params), _inputs(op, dtype), dtype, op.name)
    stats = tf.plan_stats()
    assert stats["scalar_ops"] == stats["ops"] == 1, stats
    # each input's derivative step (a constant-0 derivative too: its exact zero)
    assert stats["scalar_steps"] == (1 if op.kind == "unary" else 2), stats


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op,params", OPS[::3])
def test_adjoints_accumulate_as_eager(op, params, dtype):
    """x feeds the op and two more ops, so its adjoint is first written, then added to; a binary
    op gets the same value twice (both steps into one adjoint)."""
    fn = ROWS[op.name]
    if op.kind == "unary":
        def f(x):
            y = fn(x, **params)
            return y * x + (y - x)
    else:
        def f(a, b):
            return fn(a, a, **params) * b + fn(b, a, **params) + a
    tf = _check(f, _inputs(op, dtype)[:12], dtype, op.name, cotangents=(0.7,))
    stats = tf.plan_stats()
    assert stats["scalar_ops"] == stats["ops"], stats


def test_the_scalar_chain_runs_in_the_program():
    def chain(a, b):
        v = a
        for _ in range(50):
            v = ad.log(ad.exp(ad.tanh((v + a) * b)))
        return v

    for dtype in DTYPES:
        inputs = [(np.asarray(a, dtype), np.asarray(b, dtype)) for a, b in ((0.5, 0.9), (-0.3, 1.7), (0.0, -0.0))]
        tf = _check(chain, inputs, dtype, "chain")
        stats = tf.plan_stats()
        assert stats["scalar_ops"] == stats["ops"] == 250
        assert stats["scalar_steps"] == 350     # add and mul: two steps each


def test_tensor_steps_split_the_program_into_runs():
    """Scalar ops around tensor ops (a broadcast product, a sum, a cast from float32): those run
    as before, the scalar ones before and after them in the program, results eager's."""
    v = np.linspace(-1.0, 1.0, 7)

    def f(x, w, s32):
        h = ad.exp(x) * 0.5 + x            # scalar
        t = ad.sum(ad.tanh(w * h))         # tensor ops, a one-element sum
        u = ad.sigmoid(t) * h - ad.sqrt(x * x + 1.0)  # scalar again
        return u * s32 + ad.square(u)      # s32 is cast to float64 (not in the program)

    inputs = [(np.asarray(x), v * k, np.asarray(y, np.float32)) for x, k, y in ((0.3, 1.0, 2.0), (-1.2, 0.5, -0.5))]
    tf = _check(f, inputs, np.float64, "mixed")
    stats = tf.plan_stats()
    assert 0 < stats["scalar_ops"] < stats["ops"], stats


def test_uncovered_ops_fall_back():
    """A plan of one-element values whose ops the program does not cover (a reduction of a 0-d
    value, a reshape, a matmul of 1x1) runs them as before."""
    def f(x, m):
        return ad.sum(ad.reshape(ad.matmul(m, m), (1,)) * x) + ad.mean(x)

    tf = _check(f, [(np.asarray(0.4), np.full((1, 1), 1.5)), (np.asarray(-2.0), np.full((1, 1), 0.25))],
                np.float64, "uncovered")
    stats = tf.plan_stats()
    assert stats["scalar_ops"] < stats["ops"], stats


def test_fused_regions_and_the_program_share_a_plan():
    """fuse=1 fuses one-element chains too: the program leaves the regions' steps to fusion."""
    def f(a, b):
        v = a
        for _ in range(5):
            v = ad.tanh(v * b + a)
        return v * v

    xs = (np.asarray(0.3), np.asarray(-0.8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = ad.record(f, *xs, argnums=(0, 1), fuse=1)
        plain = ad.record(f, *xs, argnums=(0, 1))
    for inputs in (xs, (np.asarray(-1.1), np.asarray(0.6))):
        v0, g0 = ad.value_and_grad(f, argnums=(0, 1))(*inputs)
        for tf in (fused, plain):
            v1, g1 = tf.value_and_grad(*inputs)
            _same(v1, v0, "value")
            for a, b in zip(g1, g0):
                _same(a, b, "grad")
    fs, ps = fused.plan_stats(), plain.plan_stats()
    assert fs["fused_ops"] > 0 and fs["scalar_ops"] + fs["fused_ops"] <= fs["ops"], fs
    assert ps["scalar_ops"] == ps["ops"], ps


def test_guards_still_fire_on_scalar_plans():
    """A comparison and an item() of values the program computes are guards: a replay that would
    take the other branch records again (or raises), and never returns the stale branch's value."""
    def f(x):
        y = ad.exp(x) - 2.0
        if y > 0:                      # a comparison of a traced scalar
            return ad.log(y) * x
        return ad.tanh(y) * x

    def g(x):
        y = ad.sin(x) * 3.0
        return ad.square(y) if y.item() > 1.0 else -y

    for fn, at, other in ((f, 1.5, -0.5), (g, 1.0, 0.1)):
        tf = ad.record(fn, np.asarray(at))
        assert tf.plan_stats()["scalar_ops"] == tf.plan_stats()["ops"]
        for x in (at, other, at):
            _same(tf.grad(np.asarray(x)), ad.grad(fn)(np.asarray(x)), (fn.__name__, x))
        assert tf.records == 3
        strict = ad.record(fn, np.asarray(at), on_guard="raise")
        with pytest.raises(ad.GuardError):
            strict.grad(np.asarray(other))


def test_a_closed_over_scalar_written_in_place_is_seen():
    """A constant of a scalar plan sits in the arena like the others: the version check still
    makes the replay record again after an in-place write."""
    w = ad.tensor(0.5, requires_grad=True)

    def f(x):
        return ad.tanh(x * w) + w

    tf = ad.record(f, np.asarray(0.2))
    _same(tf.grad(np.asarray(0.2)), ad.grad(f)(np.asarray(0.2)), "before")
    with ad.no_grad():
        w.add_(0.25)
    _same(tf.grad(np.asarray(0.2)), ad.grad(f)(np.asarray(0.2)), "after")
    assert tf.records == 2


def test_a_nan_in_the_middle_of_a_chain_keeps_eager_bits():
    """A NaN made mid-chain (log of a negative value, inf - inf) is computed by its kernel, and
    the ops after it read it back from its slot: every later value and gradient is eager's."""
    def f(x, y):
        u = ad.log(x) * y                    # NaN for x < 0
        v = ad.tanh(u) + y * y
        w = (v - ad.square(v)) * ad.sigmoid(y) + u
        return ad.maximum(w, y) * x + ad.minimum(u, x)

    for dtype in DTYPES:
        inputs = [(np.asarray(x, dtype), np.asarray(y, dtype)) for x, y in
                  ((0.7, 0.3), (-0.7, 0.3), (np.nan, -1.2), (0.0, np.inf), (-np.inf, -0.0))]
        tf = _check(f, inputs, dtype, "nan chain")
        assert tf.plan_stats()["scalar_ops"] == tf.plan_stats()["ops"]
