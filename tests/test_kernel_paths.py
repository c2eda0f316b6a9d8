"""The layout-specialised kernel paths (issue 15), against the NumPy reference.

Each fast kernel walks contiguous memory for one layout (softmax over a run of adjacent axes seen
as (outer, len, inner) blocks, ...), so the tests pick shapes that reach every branch: the reduced
run first, in the middle, last and covering all axes; extents on both sides of the kernels' chunk
of 512; a gap between reduced axes (the general walk); non-finite slices; a second use of the
input (the accumulating store); float32 and float64.

Tolerances: float64 kernels and reference evaluate the same formulas in double in a different
order (exp(x - lse) against exp(x - m) / s), a few ulps, so 1e-12. float32 kernels compute in
double and round once while the reference computes in float32: its accumulated rounding over a
slice of up to ~1100 terms stays below 2e-5 relative (FWD) and, for gradients, 2e-4 (as in
test_ops_models.py, whose reasoning applies unchanged)."""
import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff.reference import REFERENCE

DTYPES = [np.float64, np.float32]
FWD_TOL = {np.float64: (1e-12, 1e-13), np.float32: (2e-5, 1e-6)}
GRAD_TOL = {np.float64: (1e-11, 1e-13), np.float32: (2e-4, 1e-6)}


def _data(shape, seed=0, scale=3.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


# (shape, axis): every position of the reduced run, runs of several axes, and a gap (general walk)
SOFTMAX_LAYOUTS = [
    ((3, 1100), -1), ((1100, 3), 0), ((2, 700, 3), 1), ((4, 3, 600), 2), ((600, 3, 4), 0),
    ((5, 7), 1), ((5, 7), 0), ((2, 3, 4, 5), (1, 2)), ((2, 3, 4), (0, 1, 2)), ((3, 4, 5), (0, 2)),
    ((1, 9), 0), ((8, 1), 1), ((3, 2, 530), (0, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("shape,axis", SOFTMAX_LAYOUTS)
def test_softmax_family_every_layout(op, shape, axis, dtype):
    x = _data(shape).astype(dtype)
    t = ad.tensor(x, requires_grad=True)
    out = getattr(ad, op)(t, axis=axis)
    ref = REFERENCE[op]
    expected = ref.forward(x, axis=axis)
    np.testing.assert_allclose(out.numpy(), expected, *FWD_TOL[dtype])
    g = _data(out.shape, seed=1).astype(dtype)
    # x used a second time: the softmax contribution accumulates onto x's adjoint
    (out * ad.tensor(g)).sum().backward() if out.ndim else (out * float(g)).backward()
    (t * 2.0).sum().backward()
    (gx,) = ref.vjp(g, expected, x, axis=axis)
    np.testing.assert_allclose(t.grad.numpy(), gx + 2.0, *GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("axis", [0, 1])
def test_softmax_family_non_finite_slices(op, axis, dtype):
    x = _data((4, 6)).astype(dtype)
    x[0, :] = -np.inf           # an all -inf slice on axis 1
    x[:, 1] = -np.inf           # and on axis 0
    x[2, 3] = np.inf
    x[3, 4] = np.nan
    t = ad.tensor(x, requires_grad=True)
    out = getattr(ad, op)(t, axis=axis)
    with np.errstate(all="ignore"):
        expected = REFERENCE[op].forward(x, axis=axis)
    np.testing.assert_array_equal(np.isnan(out.numpy()), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out.numpy()[finite], expected[finite], *FWD_TOL[dtype])
    np.testing.assert_array_equal(out.numpy()[~finite & ~np.isnan(expected)],
                                  expected[~finite & ~np.isnan(expected)])


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_zero_cotangent_contributes_zero(op):
    x = np.array([[1000.0, -np.inf, 3.0], [np.inf, 1.0, 2.0]])
    t = ad.tensor(x, requires_grad=True)
    out = getattr(ad, op)(t, axis=1)
    out.backward(np.zeros(out.shape))
    np.testing.assert_array_equal(t.grad.numpy(), np.zeros_like(x))



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "softmax-acc"])
def test_softmax_family_one_hot_cotangent_in_every_lane(op, dtype):
    # a cotangent nonzero in one element only, at every position of two vectors of 8 and a tail:
    # the reduction sum(g * y) (or sum(g)) must pick it up whichever vector lane holds it (an
    # eight-partial-sum loop that dropped lanes 4-7 in GCC 12's AVX2 clone passed random g)
    acc = op.endswith("-acc")
    op = op.removesuffix("-acc")
    x = _data(20, seed=27).astype(dtype)
    expected = REFERENCE[op].forward(x, axis=0)
    for k in range(20):
        g = np.zeros(20, dtype)
        g[k] = 1.5
        t = ad.tensor(x, requires_grad=True)
        out = getattr(ad, op)(t, axis=0)
        out.backward(g)
        if acc:
            (t * 2.0).sum().backward()
        (gx,) = REFERENCE[op].vjp(g, expected, x, axis=0)
        np.testing.assert_allclose(t.grad.numpy(), gx + (2.0 if acc else 0.0), *GRAD_TOL[dtype],
                                   err_msg=f"{op}, cotangent at {k}")


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_float32_shift_past_the_float_range(op):
    # x - max = -6e38 is past float32's range: its exponential is 0 (as the reference's), not
    # 0 * inf = NaN from a correction term computed from the overflowed difference
    x = np.array([[-3e38, 3e38, 1.0], [2.0, -3e38, 3e38]], np.float32)
    t = ad.tensor(x, requires_grad=True)
    out = getattr(ad, op)(t, axis=1)
    with np.errstate(over="ignore"):
        expected = REFERENCE[op].forward(x, axis=1)
    assert not np.isnan(out.numpy()).any()
    np.testing.assert_array_equal(out.numpy(), expected)
    g = np.full(out.shape, 0.5, np.float32)
    out.backward(g)
    with np.errstate(over="ignore", invalid="ignore"):
        (gx,) = REFERENCE[op].vjp(g, expected, x, axis=1)
    np.testing.assert_allclose(t.grad.numpy(), gx, *GRAD_TOL[np.float32])

# --- indexing: basic indices are strided views (slice), leading integer arrays / masks with whole
# trailing axes gather rows (blocks), everything else gathers single elements ---------------------

IDX_MASK = np.array([True, False, True, True, False, True])
INDEXES = [
    # basic: ints, steps of every sign, None, Ellipsis, empty and full slices
    (slice(None), slice(None, None, 2)), (1,), (-1, 2), (slice(1, 5, 2), Ellipsis, 0),
    (slice(None, None, -1), slice(3, 0, -2)), (None, 2, slice(None), None), (Ellipsis, -1),
    (slice(2, 2),), (0, 0, 0), (), (slice(-3, None), 1, slice(None, None, -3)),
    # rows: integer arrays / masks on the leading axes, whole trailing axes
    ([4, 0, 4, 1],), (np.array([[1, 5], [0, 0]]),), (IDX_MASK,), (IDX_MASK, Ellipsis),
    ([2, 3], slice(None)), (np.array([0, 5]), np.array([1, 1])), (2, [0, 3, 3]),
    (np.ones((6, 4), bool),), (np.array([], np.int64),),
    # other advanced forms (single elements)
    (slice(1, 3), [0, 2]), (Ellipsis, [1, 0]), ([0, 1], slice(None), [2, 3]), (None, [1, 2]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", INDEXES, ids=repr)
def test_getitem_paths_match_numpy(index, dtype):
    x = _data((6, 4, 5)).astype(dtype)
    t = ad.tensor(x, requires_grad=True)
    out = t[index]
    expected = x[index]
    assert out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_array_equal(out.numpy(), expected)
    g = _data(expected.shape, seed=2).astype(dtype)
    out.backward(g)
    (gx,) = REFERENCE["getitem"].vjp(g, expected, x, index)
    np.testing.assert_array_equal(t.grad.numpy(), gx)      # sums of the same terms in the same order
    tx = _data(x.shape, seed=3).astype(dtype)
    _, tangent = ad.jvp(lambda a: a[index], (x,), (tx,))
    np.testing.assert_array_equal(tangent.numpy(), tx[index])


def test_getitem_second_order_through_views_and_rows():
    x = _data((5, 6), seed=4)
    # f = sum(sin(x[1:, ::2]) * sin(x[[0, 0, 3]])[:4, :3]): the hessian is exact in closed form
    def f(a):
        return (ad.sin(a[1:, ::2]) ** 2).sum() + (ad.sin(a[[0, 0, 3]]) ** 3).sum()
    h = ad.hessian(f)(x).numpy().reshape(30, 30)
    d2 = np.zeros((5, 6))
    d2[1:, ::2] += 2 * np.cos(2 * x[1:, ::2])                       # (sin^2)'' = 2 cos 2x
    s, c = np.sin(x), np.cos(x)
    third = 6 * s * c * c - 3 * s ** 3                              # (sin^3)''
    d2[0] += 2 * third[0]                                           # row 0 picked twice
    d2[3] += third[3]
    np.testing.assert_allclose(h, np.diag(d2.ravel()), rtol=1e-12, atol=1e-12)
    gg = ad.grad(lambda a: ad.grad(f)(a).sum())(x).numpy()          # grad of grad: the row sums
    np.testing.assert_allclose(gg, d2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("sections", [2, [1, 3], [3, 1]])
def test_split_every_axis(axis, sections):
    x = _data((4, 6, 2), seed=5)
    if isinstance(sections, int) and x.shape[axis] % sections:
        return
    t = ad.tensor(x, requires_grad=True)
    parts = ad.split(t, sections, axis=axis)
    expected = np.split(x, sections, axis=axis)
    assert len(parts) == len(expected)
    total = 0
    for k, (p, e) in enumerate(zip(parts, expected)):
        np.testing.assert_array_equal(p.numpy(), e)
        total = total + (p * float(k + 1)).sum()
    total.backward()
    # parts may overlap ([3, 1] gives x[:3], x[3:1], x[1:]): each adds its weight where it reads
    grad = np.zeros_like(x)
    for k, pos in enumerate(np.split(np.arange(x.size).reshape(x.shape), sections, axis=axis)):
        np.add.at(grad.reshape(-1), pos.ravel(), k + 1.0)
    np.testing.assert_array_equal(t.grad.numpy(), grad)


def test_slice_and_block_gather_validate_in_c():
    # the bindings compute valid views and blocks; the C entry points must not trust their caller
    from pyautodiff._capi import ffi, lib
    from pyautodiff.tensor import _wrap
    x = ad.tensor(np.arange(12.0).reshape(3, 4))
    shape, strides = ffi.new("int64_t[]", [2, 2]), ffi.new("int64_t[]", [4, 2])
    for offset in (-1, 7, 1 << 62):
        with pytest.raises(IndexError, match="getitem"):
            _wrap(lib.ad_slice(x._h, 2, shape, offset, strides))
    huge = ffi.new("int64_t[]", [1 << 62, 1])
    with pytest.raises(IndexError, match="getitem"):
        _wrap(lib.ad_slice(x._h, 2, shape, 0, huge))
    np.testing.assert_array_equal(_wrap(lib.ad_slice(x._h, 2, shape, 5, strides)).numpy(), [[5, 7], [9, 11]])
    rows = ffi.new("int64_t[]", [8, 0])
    np.testing.assert_array_equal(_wrap(lib.ad_gather(x._h, 2, shape, rows, 2)).numpy(), [[8, 9], [0, 1]])
    with pytest.raises(ValueError, match="block of 3"):
        _wrap(lib.ad_gather(x._h, 2, shape, rows, 3))
    with pytest.raises(ValueError, match="block of 0"):
        _wrap(lib.ad_gather(x._h, 2, shape, rows, 0))
    with pytest.raises(IndexError, match="out of bounds"):
        _wrap(lib.ad_gather(x._h, 2, shape, ffi.new("int64_t[]", [11, 0]), 2))
    with pytest.raises(IndexError, match="out of bounds"):
        _wrap(lib.ad_scatter_add(x._h, 1, ffi.new("int64_t[]", [13]), ffi.new("int64_t[]", [0, 2, 10]), 4))


# --- max / min: every axis set, ties split, NaN wins, -inf and +inf slices --------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, (0, 1), (1, 2), (0, 2), -1])
def test_max_min_every_axis(op, axis, dtype):
    x = np.round(_data((5, 6, 7), seed=6)).astype(dtype)   # rounded: many ties
    x[0, 0, :] = np.inf if op == "max" else -np.inf
    x[1, :, 0] = -np.inf if op == "max" else np.inf       # loses everywhere but an all-(-inf) slice
    x[2, 1, 1] = np.nan
    t = ad.tensor(x, requires_grad=True)
    out = getattr(ad, op)(t, axis=axis)
    ref = REFERENCE[op]
    expected = ref.forward(x, axis=axis)
    np.testing.assert_array_equal(out.numpy(), expected)
    g = _data(np.shape(expected), seed=7).astype(dtype)
    out.backward(g if np.ndim(g) else float(g))
    (gx,) = ref.vjp(g, expected, x, axis=axis)
    np.testing.assert_allclose(t.grad.numpy(), gx, rtol=1e-6 if dtype == np.float32 else 1e-15)


# --- intra-op threads: bit-identical results for any thread count ----------------------------------

@pytest.fixture
def restore_threads():
    before = ad.get_num_threads()
    yield
    ad.set_num_threads(before)


def _same_for_any_thread_count(run):
    """run() (a tuple of arrays) under 1, 2, 3 and 4 intra-op threads: every result must equal the
    1-thread one bit for bit; returns that one."""
    results = []
    for threads in (1, 2, 3, 4):
        ad.set_num_threads(threads)
        results.append(run())
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            np.testing.assert_array_equal(a, b)
    return results[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["tanh", "exp", "log1p", "sin", "gelu", "multiply", "divide", "power", "maximum"])
def test_threads_give_bit_identical_results(op, dtype, restore_threads):
    n = 3 * 32768 + 1000 + 7          # several parts, a part boundary inside a chunk of 256, a tail
    x = (np.abs(_data(n, seed=8)) + 0.1).astype(dtype)
    y = (np.abs(_data(n, seed=9)) + 0.1).astype(dtype)
    g = _data(n, seed=10).astype(dtype)
    f = getattr(ad, op)
    results = []
    for threads in (1, 2, 3, 4):
        ad.set_num_threads(threads)
        a, b = ad.tensor(x, requires_grad=True), ad.tensor(y, requires_grad=True)
        out = f(a) if op in ("tanh", "exp", "log1p", "sin", "gelu") else f(a, b)
        out.backward(g, retain_graph=True)    # a cotangent per element
        (out * 1.0).sum().backward()          # a uniform cotangent, chunk by chunk
        results.append((out.numpy(), a.grad.numpy(), b.grad.numpy() if b.grad is not None else None))
    for r in results[1:]:
        for got, want in zip(r, results[0]):
            if want is not None:
                np.testing.assert_array_equal(got, want)


def test_set_num_threads_validates(restore_threads):
    for bad in (0, -1, 65, 2**40):
        with pytest.raises(ValueError, match="set_num_threads"):
            ad.set_num_threads(bad)
    for bad in (1.5, True, "2", None):
        with pytest.raises(TypeError, match="set_num_threads"):
            ad.set_num_threads(bad)
    ad.set_num_threads(3)
    assert ad.get_num_threads() == 3


def test_forked_child_runs_parallel_ops(restore_threads):
    # the child has no pool workers; its first parallel op starts new ones (threads.c's atfork)
    import os
    import signal
    import time
    ad.set_num_threads(2)
    x = ad.tensor(_data(200_000, seed=11), requires_grad=True)
    ad.tanh(x).sum().backward()
    expected = ad.tanh(x).numpy()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = np.array_equal(ad.tanh(ad.tensor(_data(200_000, seed=11))).numpy(), expected)
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in a parallel op")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# --- matmul: gemv, outer products, batches folded into one gemm, broadcast batch axes ---------------

MATMUL_SHAPES = [
    ((50, 7), (7,)), ((7,), (7, 40)), ((30, 1), (1, 20)), ((6,), (6,)),           # gemv, dot, outer
    ((3, 4, 5), (5, 2)), ((2, 3, 4, 5), (5,)), ((3, 80, 5), (5, 3)),              # folded batches
    ((3, 4, 5), (3, 5, 2)), ((4, 5), (3, 5, 2)), ((2, 1, 4, 5), (1, 3, 5, 2)),    # per batch
]
MATMUL_TOL = {np.float64: (1e-12, 1e-12), np.float32: (2e-5, 2e-5)}   # different summation orders


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=str)
def test_matmul_layouts(sa, sb, dtype):
    a, b = _data(sa, seed=12).astype(dtype), _data(sb, seed=13).astype(dtype)
    ta, tb = ad.tensor(a, requires_grad=True), ad.tensor(b, requires_grad=True)
    out = ta @ tb
    ref = REFERENCE["matmul"]
    expected = ref.forward(a, b)
    np.testing.assert_allclose(out.numpy(), expected, *MATMUL_TOL[dtype])
    g = _data(expected.shape, seed=14).astype(dtype)
    out.backward(g if np.ndim(g) else float(g))
    ga, gb = ref.vjp(g, expected, a, b)
    np.testing.assert_allclose(ta.grad.numpy(), ga, *MATMUL_TOL[dtype])
    np.testing.assert_allclose(tb.grad.numpy(), gb, *MATMUL_TOL[dtype])
    da, db = _data(sa, seed=15).astype(dtype), _data(sb, seed=16).astype(dtype)
    _, tangent = ad.jvp(lambda x, y: x @ y, (a, b), (da, db))
    np.testing.assert_allclose(tangent.numpy(), ref.jvp((da, db), expected, a, b), *MATMUL_TOL[dtype])


@pytest.mark.parametrize("sa,sb", [((3, 4, 5), (5, 2)), ((2, 3, 5), (5,))], ids=str)
def test_folded_matmul_second_order(sa, sb):
    # d/dB of grad_B sum(tanh(A @ B)): the recorded rule sums the folded batches like the numeric one
    a, b = _data(sa, seed=17) * 0.3, _data(sb, seed=18) * 0.3
    f = lambda y: ad.tanh(ad.tensor(a) @ y).sum()
    h = ad.hessian(f)(b).numpy().reshape(b.size, b.size)
    gr = lambda y: ad.grad(f)(y).numpy().ravel()
    eps, fd = 1e-6, np.zeros((b.size, b.size))
    for i in range(b.size):
        e = np.zeros(b.size)
        e[i] = eps
        fd[:, i] = (gr(b + e.reshape(b.shape)) - gr(b - e.reshape(b.shape))) / (2 * eps)
    np.testing.assert_allclose(h, fd, rtol=1e-6, atol=1e-8)      # central differences: O(eps^2)
    gg = ad.grad(lambda y: ad.grad(f)(y).sum())(b).numpy().ravel()
    np.testing.assert_allclose(gg, h.sum(axis=0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_blocked_total_is_thread_independent_and_accurate(op, dtype, restore_threads):
    import math
    x = _data(5 * 65536 + 11, seed=19).astype(dtype)
    got = []
    for threads in (1, 2, 3, 4):
        ad.set_num_threads(threads)
        got.append(getattr(ad, op)(ad.tensor(x)).numpy())
        got.append(getattr(ad, op)(ad.tensor(x.reshape(1, -1)), axis=1).numpy()[0])
    assert len({float(v) for v in got}) == 1
    exact = math.fsum(x.astype(np.float64)) / (x.size if op == "mean" else 1)
    # double accumulation of 327,691 terms: a few ulps of the sum of |x| in double; float32 adds the
    # one rounding of the result
    scale = x.size if op == "mean" else 1
    tol = 1e-12 * np.abs(x).sum() / scale + (6e-8 * abs(exact) if dtype == np.float32 else 0)
    assert abs(float(got[0]) - exact) <= tol


# the strided copy tiles a transpose once both sides have 8 or more elements along the axes that
# are contiguous on one side only (shape.c, ad_strided_pass); smaller ones are walked row by row
TRANSPOSES = [((9, 16), (1, 0)), ((3, 16, 9), (2, 1, 0)), ((8, 5, 33), (0, 2, 1)), ((40, 2, 8), (2, 0, 1))]


@pytest.mark.parametrize("shape,axes", TRANSPOSES, ids=[f"{s}-{a}" for s, a in TRANSPOSES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tiled_transposes_match_numpy(shape, axes, dtype):
    x = _data(shape).astype(dtype)
    t = ad.tensor(x, requires_grad=True)
    y = ad.transpose(t, axes)
    np.testing.assert_array_equal(y.numpy(), np.transpose(x, axes))
    g = _data(y.shape, seed=1).astype(dtype)
    y.backward(g)
    np.testing.assert_array_equal(t.grad.numpy(), np.transpose(g, np.argsort(axes)))


# --- float32 softmax family: float exponentials (softmax.c's exp_shift_ff), within a few ulps of the
# same formulas evaluated in float64 ----------------------------------------------------------------
# Bounds (the worst measured over these cases in brackets, then the old all-double kernels'): each
# exponential is libmvec's expf of hi, corrected by hi * lo (glibc documents expf's vector versions
# to 4 ulps), and the sums run in double. softmax's values are within 6 ulps of the float64 result
# [4.1, a float reciprocal since; 1.4], logsumexp's within 2 [0.5; 0.5]. log_softmax's value
# (x - m) - log(s) and the gradients cancel, so their errors are in ulps of the terms' magnitude:
# |x - m| + |log s| for log_softmax [4.0; 4.0], p * (|g| + sum|g p|) for softmax's VJP [3.8; 2.0],
# |g| + p |sum g| (1 + |y|) for log_softmax's [1.8; 0.8], |g p| for logsumexp's [4.2; 0.5]; plus
# 2^-40 absolute, the double rounding of s ~ 1 + tiny that float64 evaluations share.
F32_ULPS = {"softmax": (6, 6), "log_softmax": (6, 4), "logsumexp": (2, 6)}


def _softmax64(op, x, axis, g):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    p = e / s
    if op == "softmax":
        y, scale = p, p
        gx = p * (g - (g * p).sum(axis=axis, keepdims=True))
        gscale = p * (np.abs(g) + np.abs(g * p).sum(axis=axis, keepdims=True))
    elif op == "log_softmax":
        y, scale = (x - m) - np.log(s), np.abs(x - m) + np.abs(np.log(s))
        gx = g - p * g.sum(axis=axis, keepdims=True)
        # the VJP reads p as exp(y) of the float32 output, whose half-ulp rounding exp scales by |y|
        gscale = np.abs(g) + p * np.abs(g.sum(axis=axis, keepdims=True)) * (1 + np.abs(y))
    else:
        y = np.squeeze(m + np.log(s), axis=axis)
        scale = np.abs(y)
        gx = np.expand_dims(g, axis) * p
        gscale = np.abs(gx)
    return y, np.abs(scale) + 2.0 ** -40, gx, gscale + 2.0 ** -40


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("shape,axis", [((64, 1100), 1), ((1100, 40), 0), ((3, 600, 5), 1),
                                        ((50, 37), 1), ((7, 1), 1), ((1, 9), 0)])
def test_softmax_family_float32_within_ulps_of_float64(op, shape, axis):
    rng = np.random.default_rng(20)
    fwd_ulps, grad_ulps = F32_ULPS[op]
    for scale in (1.0, 10.0, 100.0, 1000.0):
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        t = ad.tensor(x, requires_grad=True)
        out = getattr(ad, op)(t, axis=axis)
        g = rng.standard_normal(out.shape).astype(np.float32)
        out.backward(g)
        y, yscale, gx, gscale = _softmax64(op, x.astype(np.float64), axis, g.astype(np.float64))
        assert out.dtype == np.float32 and t.grad.dtype == np.float32
        ulp = np.spacing(yscale.astype(np.float32)).astype(np.float64)
        assert np.max(np.abs(out.numpy() - y) / ulp) <= fwd_ulps, (op, scale)
        ulp = np.spacing(gscale.astype(np.float32)).astype(np.float64)
        assert np.max(np.abs(t.grad.numpy() - gx) / ulp) <= grad_ulps, (op, scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("shape,axis", [((0, 5), 1), ((5, 0), 1), ((0, 5), 0), ((1,), 0), ((3, 1), 1)])
def test_softmax_family_empty_and_single(op, shape, axis, dtype):
    x = _data(shape, seed=21).astype(dtype)
    t = ad.tensor(x, requires_grad=True)
    out = getattr(ad, op)(t, axis=axis)
    expected = REFERENCE[op].forward(x, axis=axis)
    assert out.shape == expected.shape and out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), expected, *FWD_TOL[dtype])
    g = _data(out.shape, seed=22).astype(dtype)
    out.backward(g)
    (gx,) = REFERENCE[op].vjp(g, expected, x, axis=axis)
    np.testing.assert_allclose(t.grad.numpy(), gx, *GRAD_TOL[dtype])


# --- max / min over a contiguous run (core.h's AD_DEF_EXTREME vector loop and its scalar tail):
# lengths below, at and past the 4 vectors of partial results; NaN in the vector part, in the tail
# and first; +-inf; ties (the gradient splits equally among them) -------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 31, 32, 33, 1031])
@pytest.mark.parametrize("case", ["plain", "ties", "nan-first", "nan-middle", "nan-last", "inf", "all-inf"])
def test_max_min_contiguous_run(op, n, case, dtype):
    x = _data(n, seed=23).astype(dtype)
    if case == "ties":
        x = np.round(x / 3).astype(dtype)        # many ties of the extreme
    elif case == "nan-first":
        x[0] = np.nan
    elif case == "nan-middle":
        x[n // 2] = np.nan
        x[n // 3] = np.nan
    elif case == "nan-last":
        x[-1] = np.nan
    elif case == "inf":
        x[n // 2] = np.inf
        x[0] = -np.inf
    elif case == "all-inf":
        x[:] = -np.inf if op == "max" else np.inf
    ref = REFERENCE[op]
    for shape, axis in (((n,), None), ((1, n), 1), ((2, n), (0, 1))):
        xs = np.broadcast_to(x, shape).copy()
        t = ad.tensor(xs, requires_grad=True)
        out = getattr(ad, op)(t, axis=axis)
        expected = ref.forward(xs, axis=axis)
        np.testing.assert_array_equal(out.numpy(), expected)
        g = _data(np.shape(expected), seed=24).astype(dtype) + 3
        out.backward(g if np.ndim(g) else float(g))
        (gx,) = ref.vjp(g, expected, xs, axis=axis)
        np.testing.assert_allclose(t.grad.numpy(), gx, rtol=1e-6 if dtype == np.float32 else 1e-15)
        # a second use accumulates onto the adjoint
        t2 = ad.tensor(xs, requires_grad=True)
        (getattr(ad, op)(t2, axis=axis) * ad.tensor(g) + t2.sum()).sum().backward()
        np.testing.assert_allclose(t2.grad.numpy(), gx + 1, rtol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("shape,axis", [((300, 700), 1), ((7, 20000), 1), ((3, 500, 50), 1),
                                        ((5, 130, 7, 20), (1, 2)), ((700, 300), 0)])
def test_softmax_family_threads_bit_identical(op, shape, axis, dtype, restore_threads):
    # blocks shared out over the pool (softmax.c, run_blocks): parts of whole blocks, uneven for 3
    # threads, one block per part when blocks are long; (700, 300) on axis 0 is one block
    x = _data(shape, seed=25).astype(dtype)
    x[1, 3] = -np.inf

    def run():
        t = ad.tensor(x, requires_grad=True)
        out = getattr(ad, op)(t, axis=axis)
        out.backward(_data(out.shape, seed=26).astype(dtype))
        (getattr(ad, op)(t, axis=axis) * 1.5).sum().backward()   # accumulates onto the grad
        return out.numpy(), t.grad.numpy()
    results = [_same_for_any_thread_count(run)]
    expected = REFERENCE[op].forward(x, axis=axis)
    np.testing.assert_allclose(results[0][0], expected, *FWD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("shape,axis", [((300, 700), 1), ((300, 700), 0), ((7, 20000), 0), ((3, 500, 50), 1),
                                        ((5, 130, 7, 20), (1, 2)), ((2, 3, 30001), (0, 1)),
                                        ((200003,), None), ((2, 100003), 1)])
def test_axis_reductions_threads_bit_identical(op, shape, axis, dtype, restore_threads):
    # one run of reduced axes is shared over the pool (reduce.c, reduce_blocks): by whole blocks,
    # by column ranges when there is one block (axis 0; parts of 16 columns, uneven for 3
    # threads), or, for max/min of everything, by runs of AD_SUM_BLOCK; NaN and ties included
    x = _data(shape, seed=27).astype(dtype)
    x.reshape(-1)[[5, x.size // 2]] = np.nan if op in ("max", "min") else 0
    results = _same_for_any_thread_count(lambda: (getattr(ad, op)(ad.tensor(x), axis=axis).numpy(),))
    # against the float64 result: sums are accumulated in double, more accurately than NumPy's
    # float32 pairwise sum, so NumPy's own float32 result is the less exact of the two
    expected = getattr(np, op)(x.astype(np.float64), axis=axis).astype(dtype)
    np.testing.assert_allclose(results[0], expected, *FWD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["sum", "mean"])
@pytest.mark.parametrize("shape,axis", [((300, 700), 1), ((300, 700), 0), ((3, 500, 50), 1), ((200003,), None),
                                        ((2, 3, 30001), (0, 1)), ((5, 130, 7, 20), (1, 3))])
def test_sum_vjp_threads_bit_identical(op, shape, axis, dtype, restore_threads):
    # the cotangent spread back over one run of axes is shared over the pool by rows (reduce.c,
    # sum_vjp_rows), written and then accumulated; a gap between axes (1, 3) takes the general walk
    x = _data(shape, seed=28).astype(dtype)
    g = _data(np.sum(x, axis=axis).shape, seed=29).astype(dtype)

    def run():
        t = ad.tensor(x, requires_grad=True)
        getattr(ad, op)(t, axis=axis).backward(g)
        getattr(ad, op)(t * 2.0, axis=axis).backward(g)   # a second contribution accumulates
        return (t.grad.numpy(),)
    results = _same_for_any_thread_count(run)
    count = x.size // np.size(g)
    gx = np.broadcast_to(np.expand_dims(g, axis) if axis is not None else g, shape).astype(np.float64) * 3
    np.testing.assert_allclose(results[0], gx / count if op == "mean" else gx, *FWD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["add", "multiply", "divide", "power", "maximum"])
@pytest.mark.parametrize("sa,sb", [((700, 1), (1, 300)), ((700, 300), (300,)), ((3, 1, 40000), (3, 5, 1)),
                                   ((), (300, 701)), ((70000, 1), (70000, 2)), ((2, 1), (2, 70001))])
def test_broadcast_forward_threads_bit_identical(op, sa, sb, dtype, restore_threads):
    # a broadcast forward shares its runs over the pool (elementwise.c, fwd_runs; each run moved
    # to by runs_seek): long runs, short runs, a scalar, strided (gathered) operands
    x = (np.abs(_data(sa, seed=30)) + 0.5).astype(dtype)
    y = (np.abs(_data(sb, seed=31)) + 0.5).astype(dtype)
    results = _same_for_any_thread_count(lambda: (getattr(ad, op)(ad.tensor(x), ad.tensor(y)).numpy(),))
    np.testing.assert_allclose(results[0], getattr(np, op)(x, y), *FWD_TOL[dtype])
