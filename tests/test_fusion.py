"""Fused replay (csrc/fusion.c): elementwise chains on one large shape run tile by tile, forward and
reverse, with a root sum folded in and, in ad_plan_run, the reverse in the forward's pass.

The promise is the unfused replay's bits (and so eager's): the same kernels per element in the same
order, a broadcast scalar's gradient summed in the same lanes across tiles, the folded sum in
reduce.c's block and lane order. Each test records f twice, fused (``fuse=1``: from one element,
so that every size fuses) and unfused (``fuse=False``), and compares both with eager
``ad.value_and_grad`` / ``ad.vjp`` bit for bit, at sizes around the tile (1, tile - 1, tile,
tile + 1, 10^5 + 3) and past reduce.c's blocked sum (2 * 2^16 elements).
"""
import warnings
import zlib

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff._capi import ffi, lib
from pyautodiff.record import FUSE_MIN_ELEMENTS

DTYPES = [np.float64, np.float32]


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _bits(a):
    a = np.asarray(a.numpy() if isinstance(a, ad.Tensor) else a)
    return a.dtype.str, a.shape, a.tobytes()


def _same(got, expected, what):
    assert _bits(got) == _bits(expected), (what, got, expected)


UNARY = [ad.tanh, ad.sin, ad.sigmoid, ad.square, ad.negative, ad.abs, ad.relu, ad.cos, ad.softplus,
         lambda v: ad.exp(-ad.square(v)), lambda v: v * 1.5, lambda v: 0.25 - v, lambda v: ad.sqrt(ad.abs(v))]
BINARY = [ad.add, ad.subtract, ad.multiply, ad.maximum, ad.minimum,
          lambda a, b: a / (ad.abs(b) + 1.0)]


def random_chain(seed, ops=10, root="sum"):
    """f(x, y, w): a random elementwise chain over x and y (one shape) and w (0-d, broadcast), with
    fan-out (every value may be used again), reduced to a scalar (root "sum" or "mean") or not."""
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(ops):
        if rng.random() < 0.45:
            plan.append(("u", int(rng.integers(len(UNARY))), None))
        else:
            plan.append(("b", int(rng.integers(len(BINARY))), float(rng.random())))
    picks = rng.integers(0, 1 << 30, size=(ops, 2))

    def f(x, y, w):
        vals = [x, y]
        for (kind, k, p), (a, b) in zip(plan, picks):
            u = vals[a % len(vals)]
            if kind == "u":
                vals.append(UNARY[k](u))
            else:
                v = w if p < 0.25 else vals[b % len(vals)]   # a broadcast scalar operand, or fan-out
                vals.append(BINARY[k](u, v) if p < 0.6 else BINARY[k](v, u))
        out = vals[-1] + vals[-2] * vals[len(vals) // 2]
        if root == "sum":
            return ad.sum(out)
        if root == "mean":
            return ad.mean(out)
        return out

    return f


def _inputs(n, dtype, key, special=False):
    rng = _rng(n, dtype.__name__, key)
    x = rng.normal(size=n).astype(dtype)
    y = rng.uniform(-2, 2, size=n).astype(dtype)
    if special and n >= 4:
        x[rng.integers(n, size=3)] = [np.nan, np.inf, -np.inf]
        y[rng.integers(n)] = np.nan
    return x, y, np.asarray(rng.uniform(0.3, 1.2), dtype)


def check_fused(f, args, argnums, cotangent=None, fused_at_least=1):
    """f recorded fused and unfused: both replays equal eager bit for bit; fusion happened."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            fused = ad.record(f, *args, argnums=argnums, fuse=1)
            plain = ad.record(f, *args, argnums=argnums, fuse=False)
            assert plain.plan_stats()["fused_ops"] == 0
            assert fused.plan_stats()["fused_ops"] >= fused_at_least, fused.plan_stats()
            if cotangent is None:
                ve, ge = ad.value_and_grad(f, argnums=argnums)(*args)
                results = [tf.value_and_grad(*args) for tf in (fused, plain)]
                # a forward alone (no reverse in its pass), then the gradient
                results += [(fused(*args), fused.grad(*args))]
            else:
                ve, vjp = ad.vjp(f, *args)   # (argnums: every argument)
                ge = vjp(cotangent)
                results = []
                for tf in (fused, plain):
                    v, vjp_r = tf.vjp(*args)
                    results.append((v, vjp_r(cotangent)))
    for v, g in results:
        _same(v, ve, "value")
        for a, b in zip(g if isinstance(g, tuple) else (g,), ge if isinstance(ge, tuple) else (ge,)):
            _same(a, b, "gradient")
    return fused


def tile_of(f, args, argnums):
    return ad.record(f, *args, argnums=argnums, fuse=1).plan_stats()["tile"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("seed", range(6))
def test_random_chains_fused_equal_eager(seed, dtype):
    f = random_chain(seed)
    tile = tile_of(f, _inputs(5000, dtype, seed), (0, 1, 2))
    assert tile >= 256 and tile % 256 == 0
    for n in (1, tile - 1, tile, tile + 1, 100_003):
        check_fused(f, _inputs(n, dtype, seed), (0, 1, 2), fused_at_least=1 if n == 1 else 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("seed", range(3))
def test_nan_and_inf_inputs(seed, dtype):
    f = random_chain(100 + seed)
    for n in (257, 10_007):
        check_fused(f, _inputs(n, dtype, seed, special=True), (0, 1, 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("root", ["mean", "vector"])
def test_mean_root_and_vector_root(root, dtype):
    f = random_chain(7, root=root)
    args = _inputs(30_001, dtype, root)
    cot = None if root == "mean" else _rng(root, "cot").normal(size=30_001).astype(dtype)
    check_fused(f, args, (0, 1, 2), cotangent=cot)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_blocked_sum_is_folded_in_reduce_order(dtype):
    """Past 2 * 2^16 elements reduce.c sums blocks of 2^16 and adds the blocks in order; the folded
    sum must follow (a 2-D shape too: one run along the whole value)."""
    def f(x, y, w):
        return ad.sum(ad.tanh(x * w + 0.5) * ad.exp(-x * y))

    fused = check_fused(f, _inputs(300_001, dtype, "blocked"), (0, 1, 2))
    assert fused.plan_stats()["fused_ops"] == 8    # the six elementwise ops, the scalar's add, the sum
    x, y, w = _inputs(2 * 65536 * 2, dtype, "2d")
    check_fused(f, (x.reshape(512, 512), y.reshape(512, 512), w), (0, 1, 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_intermediate_read_outside_the_region(dtype):
    """u feeds the region's later ops and also a reshape and slice (not fused): u's value and adjoint
    then live in the plan's arena, its other contributions arriving before the region's reverse."""
    def f(x, y, w):
        u = ad.sin(x) * y
        v = ad.exp(-ad.square(u)) + u * w
        side = ad.sum(u.reshape((-1,))[::3] * 2.0)
        return ad.sum(ad.tanh(v) * u) + side

    for n in (255, 4097, 50_001):
        check_fused(f, _inputs(n, dtype, "outside"), (0, 1, 2), fused_at_least=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_broadcasting_is_left_unfused(dtype):
    """A (k, n) by (n,) op is not a region op: the chain splits around it, the results stay exact."""
    def f(x, y, w):
        a = ad.tanh(x) * ad.exp(-x * x)           # a region of shape (n,)
        b = a + y                                 # (n,) + (k, n): broadcasting, unfused
        c = ad.sigmoid(b) * b - w                 # a region of shape (k, n)
        return ad.sum(ad.square(c))

    rng = _rng("bcast", dtype.__name__)
    x = rng.normal(size=3001).astype(dtype)
    y = rng.normal(size=(4, 3001)).astype(dtype)
    w = np.asarray(0.3, dtype)
    fused = check_fused(f, (x, y, w), (0, 1, 2))
    assert fused.plan_stats()["fused_regions"] == 2


def test_default_threshold_and_switch():
    def f(x):
        return ad.sum(ad.tanh(x) * ad.exp(-x))

    big, small = np.linspace(-1, 1, FUSE_MIN_ELEMENTS), np.linspace(-1, 1, FUSE_MIN_ELEMENTS - 1)
    assert ad.record(f, big).plan_stats()["fused_regions"] == 1
    assert ad.record(f, small).plan_stats()["fused_regions"] == 0
    assert ad.record(f, big, fuse=False).plan_stats()["fused_regions"] == 0
    for bad in (0, -3, 2.5, "yes"):
        with pytest.raises(ValueError, match="fuse must be"):
            ad.record(f, big, fuse=bad)


def test_plan_fuse_in_c():
    """ad_plan_fuse refuses a negative threshold and leaves the plan as it was; 0 turns fusion off
    and a forward then a separate backward (the reverse that recomputes) still equal eager."""
    def f(x):
        return ad.sum(ad.sin(x) * ad.cos(x) + x)

    x = np.linspace(-2, 2, 20_000)
    tf = ad.record(f, x, fuse=1)
    plan = next(iter(tf._plans.values())).plan
    counts = ffi.new("int64_t[3]")
    assert lib.ad_plan_fuse(plan, -1, counts, counts + 1, counts + 2) < 0
    # a new fusion after a forward: the forward's values are where the old regions put them, so a
    # reverse must not run on them (an error, not a silent wrong gradient)
    assert lib.ad_plan_forward(plan, ffi.new("void *[]", [ffi.from_buffer(x)]), ffi.NULL) == 0
    assert lib.ad_plan_fuse(plan, 0, ffi.NULL, ffi.NULL, ffi.NULL) == 0
    grad0 = np.empty_like(x)
    assert lib.ad_plan_backward(plan, ffi.NULL, ffi.new("void *[]", [ffi.from_buffer(grad0)])) < 0
    ve, ge = ad.value_and_grad(f)(x)
    out, grad = np.empty(()), np.empty_like(x)
    keep = [ffi.from_buffer(a) for a in (x, out, grad)]
    for threshold, regions in ((1, 1), (0, 0), (1000, 1)):
        assert lib.ad_plan_fuse(plan, threshold, counts, counts + 1, counts + 2) == 0
        assert counts[0] == regions
        assert lib.ad_plan_forward(plan, ffi.new("void *[]", [keep[0]]), keep[1]) == 0
        assert lib.ad_plan_backward(plan, ffi.NULL, ffi.new("void *[]", [keep[2]])) == 0
        _same(out, ve, "value")
        _same(grad, ge, "gradient")
        # and a second reverse of the same forward
        grad[:] = 0
        assert lib.ad_plan_backward(plan, ffi.NULL, ffi.new("void *[]", [keep[2]])) == 0
        _same(grad, ge, "gradient")


def test_guarded_plan_runs_forward_and_reverse_apart():
    """A plan with a guard replays as forward, check, backward: the fused reverse recomputes the
    region's values from its inputs."""
    def f(x):
        s = ad.tanh(x) * ad.exp(-x * x)
        if (x[0] > 0).item():
            return ad.sum(s * 2.0)
        return ad.sum(s)

    x = np.linspace(-1, 1, 20_001)
    tf = ad.record(f, x, fuse=1)
    assert tf.plan_stats()["guards"] == 1 and tf.plan_stats()["fused_ops"] >= 4
    for xv in (x, x * 0.5):
        v, g = tf.value_and_grad(xv)
        ve, ge = ad.value_and_grad(f)(xv)
        _same(v, ve, "value")
        _same(g, ge, "gradient")
