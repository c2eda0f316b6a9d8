"""Forward mode (ad_jvp), the batched reverse sweep (ad_vjp) and the functional API.

The op tables the issue-2 and model-op tests use (tests/op_table.py ROWS and
test_ops_models.CASES: every op code, every calling form, samples with broadcasting, 0-d, 0-size,
ties, NaN and infinities, mixed dtypes) drive:
  - the C JVP against the reference JVP, both dtypes, with tangents that are partly exactly zero
    (so the NaN-safety rule, a zero tangent contributes exactly 0, is exercised everywhere);
  - the C JVP against central differences (float64, smooth samples);
  - the batched reverse sweep (ad.vjp) against the reference VJP, both dtypes;
  - width-k sweeps: jacfwd against the reference JVP of every basis direction and jacrev against
    the reference VJP of every basis cotangent, and jacfwd == jacrev.
Then composite functions (MLP layers, softmax, broadcasts, reductions, matmul chains, the model
ops): jacfwd == jacrev == ad.numerical_jacobian in float64 and float32, and the API's semantics
and errors.

Tolerances (rtol, atol), applied as |c - ref| <= atol * scale + rtol * |ref| with scale =
max(1, max|ref|):
  C vs reference, per op:   float64 (1e-13, 1e-14)  float32 (2e-6, 1e-6), or the table's own
  tolerance for the op where that is looser (float32 logsumexp at +-1000, for example)
    Both compute the same formula in the same dtype; they differ by libm vs NumPy (~1-4 ulp), by
    t*(1/x) vs t/x, and by summation order in reductions and gemm (k <= 70 terms here). atol
    covers cancellation: tanh's 1 - y*y near |y| = 1 is off by an ulp of 1 (1.2e-7 in float32).
  C vs central differences, per op: float64 (1e-6, 1e-7), step h = 1e-6
    Truncation error ~h^2 |f'''| ~ 1e-12, round-off ~eps |f| / h ~ 2e-10 |f|.
  Composites, jacfwd vs jacrev: float64 (1e-12, 1e-13)  float32 (5e-6, 5e-7)
    Same derivatives accumulated in different orders through ~10 ops.
  Composites vs central differences (taken in float64 on the same function at the same point,
  so the float32 result is compared with the exact derivative it approximates):
    float64 (1e-7, 1e-8)  float32 (2e-5, 2e-6)
  On this machine the worst composite errors are 2-10% of these tolerances.
"""
import gc
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import numpy as np
import pytest

import op_table
import pyautodiff as ad
from pyautodiff import opdefs
import test_ops_models as op_models
from pyautodiff._capi import check, ffi, lib
from pyautodiff.reference import REFERENCE
from pyautodiff.tensor import _wrap

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
DTYPES = [F64, F32]
OP_TOL = {F64: (1e-13, 1e-14), F32: (2e-6, 1e-6)}
CD_TOL = (1e-6, 1e-7)
CD_STEP = 1e-6


def close(actual, expected, tol, what=""):
    """|a - e| <= atol * max(1, max|e|) + rtol * |e|, NaN where NaN, inf where the same inf."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    finite = np.isfinite(e)
    scale = max(1.0, float(np.max(np.abs(e[finite]), initial=0.0)))
    rtol, atol = tol
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol * scale, equal_nan=True, err_msg=what)


# ---------------------------------------------------------------------------------------------
# the op tables: tests/op_table.py (issue-2 ops) and test_ops_models.CASES (the models' ops)
# ---------------------------------------------------------------------------------------------
@dataclass
class OpCase:
    id: str
    call: Callable               # call(*tensors) through the public API
    arrays: Callable             # dtype under test -> the input arrays
    reference: Callable          # inputs -> (RefOp, reference inputs, positional params, keyword params,
                                 #            reference input index of each of our inputs)
    smooth: bool                 # differentiable around the point: central differences apply
    value_tol: dict              # the table's tolerance for values, by output dtype
    grad_tol: dict               # the table's tolerance for gradients, by input dtype


def _op_table_cases():
    for r in op_table.ROWS:
        for i, s in enumerate(r.sample_list()):
            params = {**r.params, **s.params}
            yield OpCase(
                f"{r.name}-{i}-{s.label}",
                lambda *t, r=r, s=s: r.fn(*t, **s.params),
                lambda dt, r=r, s=s: r.cast(s, dt),
                lambda xs, r=r, p=params: (REFERENCE[r.ref], r.reference_inputs(xs), (), p,
                                           r.grad_indices(len(xs))),
                s.smooth, r.tol, r.grad_tol or r.tol)


def _model_cases():
    value_tol = {np.dtype(k): v for k, v in op_models.FWD_TOL.items()}
    grad_tol = {np.dtype(k): v for k, v in op_models.GRAD_TOL.items()}
    for cid, name, arrays, call, pos, kw in op_models.CASES:
        yield OpCase(
            cid, call,
            lambda dt, a=arrays: tuple(x.astype(dt) for x in a),
            lambda xs, name=name, pos=pos, kw=kw: (REFERENCE[name], tuple(xs), pos, kw, tuple(range(len(xs)))),
            True, value_tol, grad_tol)


OP_CASES = list(_op_table_cases()) + list(_model_cases())
C_OPS = {op.reference for op in opdefs.ALL} | {"sum", "mean", "max", "min",
         "matmul", "reshape", "transpose", "broadcast_to", "cast", "getitem", "concatenate", "stack", "where",
         "clip", "logsumexp", "softmax", "log_softmax"}


def test_tables_reach_every_op_code():
    # every op code of the C table has a JVP kernel; the two tables reach each of them
    refs = {r.ref for r in op_table.ROWS} | {c[1] for c in op_models.CASES}
    assert C_OPS <= refs, sorted(C_OPS - refs)


def _tol(table_tol, dtype, xs=()):
    """The looser of this file's tolerance and the one the table states for the op (the tables
    document why some ops need more, e.g. float32 logsumexp at +-1000). With a float32 input
    among float64 ones the reference forms that input's local derivative in float32 (NumPy's
    1/b of a float32 b is float32) while the C core promotes first, so float32's applies."""
    if any(np.asarray(x).dtype == F32 for x in xs):
        dtype = F32
    mine, theirs = OP_TOL[np.dtype(dtype)], table_tol[np.dtype(dtype)]
    return max(mine[0], theirs[0]), max(mine[1], theirs[1])


def _params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


def _tangents(rng, xs):
    # about a third of the entries exactly zero: every comparison also checks the NaN-safety rule
    return tuple((rng.standard_normal(x.shape) * (rng.random(x.shape) > 0.35)).astype(x.dtype) for x in xs)


def _quiet(fn, *args, **kw):
    # the edge samples produce IEEE infinities and NaNs on purpose
    with np.errstate(all="ignore"):
        return fn(*args, **kw)


def _reference_jvp(c, xs, ts):
    op, rx, pos, kw, where = c.reference(xs)
    out = _quiet(op.forward, *rx, *pos, **kw)
    tangents = [None] * len(rx)
    for i, k in enumerate(where):
        tangents[k] = ts[i]
    return out, _quiet(op.jvp, tangents, out, *rx, *pos, **kw)


def _reference_vjp(c, xs, g):
    op, rx, pos, kw, where = c.reference(xs)
    out = _quiet(op.forward, *rx, *pos, **kw)
    grads = _quiet(op.vjp, g, out, *rx, *pos, **kw)
    return out, tuple(grads[k] for k in where)


def _seed(c, *extra):
    return zlib.crc32(repr((c.id,) + extra).encode())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", _params(OP_CASES))
def test_jvp_matches_reference(c, dtype):
    xs = c.arrays(dtype)
    ts = _tangents(np.random.default_rng(_seed(c, str(dtype))), xs)
    out, t_out = ad.jvp(c.call, xs, ts)
    ref_out, ref_t = _reference_jvp(c, xs, ts)
    assert t_out.dtype == out.dtype == ref_out.dtype
    close(t_out, ref_t, _tol(c.value_tol, out.dtype, xs), "tangent")


def _all_float64(c):
    return all(x.dtype == F64 for x in c.arrays(F64))


# Mixed-dtype rows keep a float32 input, whose perturbation by h would drown in its rounding.
@pytest.mark.parametrize("c", _params([c for c in OP_CASES if c.smooth and _all_float64(c)]))
def test_jvp_matches_central_differences(c):
    xs = c.arrays(F64)
    ts = tuple(np.random.default_rng(_seed(c)).standard_normal(x.shape) for x in xs)
    _, t_out = ad.jvp(c.call, xs, ts)
    # a float32 output (astype) is rounded to 6e-8 relative: a larger step keeps that round-off
    # (~6e-8 / h) small, and the function is linear, so the step costs no truncation error
    h, tol = (CD_STEP, CD_TOL) if t_out.dtype == F64 else (5e-3, (1e-4, 1e-4))
    with ad.no_grad():
        plus = np.asarray(c.call(*[ad.tensor(x + h * t) for x, t in zip(xs, ts)]), np.float64)
        minus = np.asarray(c.call(*[ad.tensor(x - h * t) for x, t in zip(xs, ts)]), np.float64)
    close(t_out, (plus - minus) / (2 * h), tol, "jvp vs central differences")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", _params(OP_CASES))
def test_vjp_matches_reference(c, dtype):
    xs = c.arrays(dtype)
    out, vjp_fn = ad.vjp(c.call, *xs)
    g = np.random.default_rng(_seed(c, "g", str(dtype))).standard_normal(out.shape).astype(out.dtype)
    grads = vjp_fn(g)
    _, ref_grads = _reference_vjp(c, xs, g)
    assert len(grads) == len(xs)
    for k, (gr, expected) in enumerate(zip(grads, ref_grads)):
        assert gr.dtype == xs[k].dtype and gr.shape == xs[k].shape
        close(gr, expected, _tol(c.grad_tol, xs[k].dtype), f"gradient of input {k}")


def _small(c):
    """Inputs and output of at most 200 elements: the per-direction reference loop stays quick."""
    xs = c.arrays(F64)
    with ad.no_grad():
        out = c.call(*[ad.tensor(x) for x in xs])
    return sum(x.size for x in xs) <= 200 and out.size <= 200


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", _params([c for c in OP_CASES if _small(c)]))
def test_width_k_sweeps_match_reference(c, dtype):
    """jacfwd pushes every basis direction through one sweep of width n (the batched JVP kernels),
    jacrev pulls every basis cotangent through one backward sweep of width m."""
    xs = c.arrays(dtype)
    argnums = tuple(range(len(xs)))
    with ad.no_grad():
        out = np.asarray(c.call(*[ad.tensor(x) for x in xs]))
    jf = ad.jacfwd(c.call, argnums=argnums)(*xs)
    jr = ad.jacrev(c.call, argnums=argnums)(*xs)
    for k, x in enumerate(xs):
        ref_f = np.zeros((out.size, x.size))
        ref_r = np.zeros((out.size, x.size))
        for j in range(x.size):
            e = [np.zeros(y.shape, y.dtype) for y in xs]
            e[k].flat[j] = 1
            ref_f[:, j] = _reference_jvp(c, xs, e)[1].ravel()
        for j in range(out.size):
            g = np.zeros(out.shape, out.dtype)
            g.flat[j] = 1
            ref_r[j] = _reference_vjp(c, xs, g)[1][k].ravel()
        assert jf[k].shape == jr[k].shape == out.shape + x.shape
        close(jf[k], ref_f.reshape(out.shape + x.shape), _tol(c.value_tol, out.dtype, xs), f"jacfwd block {k}")
        close(jr[k], ref_r.reshape(out.shape + x.shape), _tol(c.grad_tol, x.dtype), f"jacrev block {k}")
        if c.smooth:
            close(jf[k], jr[k], _tol(c.grad_tol, x.dtype), f"jacfwd vs jacrev block {k}")

# ---------------------------------------------------------------------------------------------
# composite functions: jacfwd == jacrev == central differences
# ---------------------------------------------------------------------------------------------
COMPOSITE_TOL = {F64: {"fwd_rev": (1e-12, 1e-13), "numeric": (1e-7, 1e-8)},
                 F32: {"fwd_rev": (5e-6, 5e-7), "numeric": (2e-5, 2e-6)}}


def numerical_jacobian(f, xs, argnums):
    """ad.numerical_jacobian (central differences) taken in float64 on float64 copies of the
    inputs: for float32 inputs, the exact derivative the float32 result approximates."""
    jac = ad.numerical_jacobian(f, *[ad.tensor(np.asarray(x, np.float64)) for x in xs])
    jac = jac if isinstance(jac, tuple) else (jac,)
    return [jac[k] for k in argnums]


def _softmax(x, axis=-1):
    e = ad.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _mlp_layer(x, W, b):
    return ad.tanh(x @ W + b)


def _mlp2(x, W1, b1, W2):
    h = ad.sigmoid(x @ W1 + b1)
    return _softmax(h @ W2)


def _cross_entropy(x, W, b):
    logits = x @ W + b
    m = logits.max(axis=1, keepdims=True)
    logz = ad.log(ad.exp(logits - m).sum(axis=1, keepdims=True)) + m
    return -(logits - logz).mean()


def _broadcasts(a, b, c):
    # (3, 1) with (1, 4) with (4,): every operand broadcasts, and a reduction undoes it
    return (a * b + c) / (1.0 + (a - b) ** 2) + ad.broadcast_to(c, (2, 3, 4)).mean(axis=0)


def _reductions(x):
    # sum, max and min over different axes, mean over a tuple with keepdims, broadcast back together
    return x.sum(axis=0) * x.max(axis=1).mean() + (x ** 2).mean(axis=(0, 1), keepdims=True) - x.min(axis=0)


def _matmul_chain(A, B, M, v):
    # 2-D @ 2-D, batched @ 2-D (the batch axis broadcasts), N-D @ 1-D, and a transpose
    D = ad.reshape(A @ B, (2, 3, 2))
    return ad.sin(D @ M) @ v + (A @ B).T.sum(axis=0)


def _layout(x):
    return ad.transpose(ad.reshape(x.T @ x, (2, 8)), (1, 0)).reshape(4, 2, 2).sum(axis=1) * x.mean()


def _scalar_ops(x):
    return 1.0 / (1.0 + 2.0 ** x) - 3.0 * x ** 2 + ad.sqrt(x * x + 1.0) / 4.0 - (2.0 - x) ** 3.0


def _routing(x, y):
    # max/min and maximum/minimum away from ties: the router picks one side everywhere
    return ad.maximum(x, 2.0 * y) - ad.minimum(ad.relu(x), ad.abs(y)) + x.max(axis=0) * y.min()


def _shared_operands(x, W):
    # x and W each feed several matmuls (as the vector, the row and the matrix side): the batched
    # reverse sweep must accumulate their k adjoint rows across consumers
    return W @ x + (W.T @ x) * x + x @ W + ad.tanh(W @ W) @ x


def _model_ops(x, W):
    # the model ops in one graph: log_softmax, indexing with repeats, concatenate/stack, where,
    # clip (its kinks at +-0.5 are met with probability 0 by normal samples), logsumexp
    logp = ad.log_softmax(x @ W, axis=1)
    picked = logp[[0, 1, 2, 0], [1, 0, 2, 1]]
    both = ad.stack([picked, ad.concatenate([picked[2:], picked[:2]])])
    return ad.where(np.array([[True], [False]]), both, ad.clip(both, -0.5, 0.5)) + ad.logsumexp(x, axis=0)[:1]


COMPOSITES = {
    # name: (f, input shapes, positive inputs?)
    "mlp_layer": (_mlp_layer, [(4, 3), (3, 5), (5,)], False),
    "mlp2_softmax": (_mlp2, [(2, 4), (4, 6), (6,), (6, 3)], False),
    "softmax_last": (lambda x: _softmax(x, -1), [(3, 4)], False),
    "softmax_first": (lambda x: _softmax(x, 0), [(3, 4)], False),
    "cross_entropy": (_cross_entropy, [(5, 3), (3, 4), (4,)], False),
    "broadcasts": (_broadcasts, [(3, 1), (1, 4), (4,)], False),
    "reductions": (_reductions, [(3, 4)], False),
    "matmul_chain": (_matmul_chain, [(3, 2), (2, 4), (2, 5), (5,)], False),
    "layout": (_layout, [(3, 4)], False),
    "scalar_ops": (_scalar_ops, [(2, 3)], True),
    "routing": (_routing, [(3, 4), (3, 4)], False),
    "shared_operands": (_shared_operands, [(4,), (4, 4)], False),
    "model_ops": (_model_ops, [(3, 4), (4, 3)], False),
    "softmax_op": (lambda x: ad.softmax(x * 2.0, axis=(0, 1)), [(2, 3)], False),
}


def _composite_inputs(name, dtype):
    f, shapes, pos = COMPOSITES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    xs = [(rng.uniform(0.5, 2.0, s) if pos else rng.standard_normal(s)).astype(dtype) for s in shapes]
    return f, xs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_jacobians_agree(name, dtype):
    f, xs = _composite_inputs(name, dtype)
    argnums = tuple(range(len(xs)))
    jf = ad.jacfwd(f, argnums=argnums)(*xs)
    jr = ad.jacrev(f, argnums=argnums)(*xs)
    jn = numerical_jacobian(f, xs, argnums)
    tol = COMPOSITE_TOL[dtype]
    for k in argnums:
        assert jf[k].shape == jr[k].shape == jn[k].shape
        assert jr[k].dtype == dtype
        assert np.all(np.isfinite(np.asarray(jf[k])))
        close(jf[k], jr[k], tol["fwd_rev"], f"{name}: jacfwd vs jacrev, input {k}")
        close(jf[k], jn[k], tol["numeric"], f"{name}: jacfwd vs central differences, input {k}")
        close(jr[k], jn[k], tol["numeric"], f"{name}: jacrev vs central differences, input {k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_jvp_and_vjp_are_jacobian_products(name, dtype):
    f, xs = _composite_inputs(name, dtype)
    rng = np.random.default_rng(7)
    ts = [rng.standard_normal(x.shape).astype(dtype) for x in xs]
    out, t_out = ad.jvp(f, xs, ts)
    jn = numerical_jacobian(f, xs, tuple(range(len(xs))))
    expected = sum(np.tensordot(j, t, axes=t.ndim) for j, t in zip(jn, ts))
    close(t_out, expected, COMPOSITE_TOL[dtype]["numeric"], f"{name}: jvp")
    out2, vjp_fn = ad.vjp(f, *xs)
    close(out2, out, (0, 0), "vjp and jvp compute the same value")
    g = rng.standard_normal(out.shape).astype(out.dtype)
    grads = vjp_fn(g)
    for k, (gr, j) in enumerate(zip(grads, jn)):
        close(gr, np.tensordot(g, j, axes=g.ndim), COMPOSITE_TOL[dtype]["numeric"], f"{name}: vjp input {k}")


def test_mixed_precision_promotes_through_a_cast_node():
    # float32 input, float64 constant: the product is float64 through a recorded cast
    c = ad.tensor(np.array([0.5, -2.0, 3.0]))
    x = np.array([1.0, 2.0, -1.0], np.float32)

    def f(x):
        return x * c + ad.exp(x)

    jf, jr = ad.jacfwd(f)(x), ad.jacrev(f)(x)
    assert jf.dtype == F64 and jr.dtype == F32
    expected = np.diag(np.asarray(c) + np.exp(x.astype(np.float64)))
    close(jf, expected, (1e-7, 1e-7))
    close(jr, expected, (1e-7, 1e-7))


# ---------------------------------------------------------------------------------------------
# the seed's rules in forward mode, and NaN-safety
# ---------------------------------------------------------------------------------------------
def test_zero_tangent_contributes_exactly_zero_where_the_derivative_is_infinite():
    # sqrt, log, 1/x and x**0.5 have infinite derivatives at 0 and exp overflows at 800; x's
    # tangent is 0, so only y's tangent may reach the output, exactly
    def f(x, y):
        return ad.sqrt(x) + ad.log(x) + 1.0 / x + x ** 0.5 + ad.exp(x + 800.0) * 0.0 + 2.0 * y

    x, y = np.array([0.0, 0.0]), np.array([1.0, 2.0])
    _, t = ad.jvp(f, (x, y), (np.zeros(2), np.ones(2)))
    assert np.array_equal(np.asarray(t), [2.0, 2.0])
    # a nonzero tangent stays IEEE: d sqrt(x) at 0 is +inf
    _, t = ad.jvp(ad.sqrt, (x,), (np.array([1.0, 0.0]),))
    assert np.array_equal(np.asarray(t), [np.inf, 0.0])


def test_add_distributes_mul_swaps_in_forward_mode():
    a, b = np.array([2.0, -3.0]), np.array([5.0, 7.0])
    ta, tb = np.array([1.0, 10.0]), np.array([100.0, 1000.0])
    assert np.array_equal(np.asarray(ad.jvp(ad.add, (a, b), (ta, tb))[1]), ta + tb)
    assert np.array_equal(np.asarray(ad.jvp(ad.multiply, (a, b), (ta, tb))[1]), ta * b + tb * a)


def test_max_routes_the_tangent_and_ties_average():
    x = np.array([3.0, 3.0, 1.0])
    t = np.array([1.0, 5.0, 100.0])
    assert ad.jvp(ad.max, (x,), (t,))[1].item() == 3.0          # mean of the two tied tangents
    assert ad.jvp(ad.max, (np.array([1.0, 4.0, 2.0]),), (t,))[1].item() == 5.0
    # maximum(x, x): each side gets half, so the tangent passes through whole
    _, tm = ad.jvp(lambda u: ad.maximum(u, u), (x,), (t,))
    assert np.array_equal(np.asarray(tm), t)


def test_model_ops_rules_in_forward_mode():
    # clip passes the tangent on the closed interval, boundaries included, and 0 strictly outside
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    _, t = ad.jvp(lambda u: ad.clip(u, -1.0, 1.0), (x,), (np.ones(5),))
    assert np.array_equal(np.asarray(t), [0.0, 1.0, 1.0, 1.0, 0.0])
    # where selects the tangent: a masked sqrt of negatives stays finite where it is not chosen
    _, t = ad.jvp(lambda u: ad.where(u > 0, ad.sqrt(ad.abs(u)), 0.0 * u), (x,), (np.ones(5),))
    assert np.array_equal(np.asarray(t), [0.0, 0.0, 0.0, 0.5, 0.5 / np.sqrt(2.0)])
    # an element picked twice carries its tangent twice
    _, t = ad.jvp(lambda u: u[[0, 0, 3]], (x,), (np.arange(5.0),))
    assert np.array_equal(np.asarray(t), [0.0, 0.0, 3.0])
    # the softmax family stays finite at +-1000 in both modes
    big = np.array([[1000.0, -1000.0, 999.0]])
    for op in (ad.softmax, ad.log_softmax, lambda u: ad.logsumexp(u, axis=1)):
        jf, jr = np.asarray(ad.jacfwd(op)(big)), np.asarray(ad.jacrev(op)(big))
        assert np.all(np.isfinite(jf)) and np.allclose(jf, jr, rtol=1e-12, atol=1e-15)


def test_broadcast_and_sum_are_duals_in_both_modes():
    x = np.array([1.0, 2.0, 3.0])
    f = lambda u: ad.broadcast_to(u, (2, 3)).sum(axis=0)   # noqa: E731
    assert np.array_equal(np.asarray(ad.jacfwd(f)(x)), 2 * np.eye(3))
    assert np.array_equal(np.asarray(ad.jacrev(f)(x)), 2 * np.eye(3))


def test_width_k_sweep_equals_k_single_directions():
    f, xs = _composite_inputs("mlp2_softmax", F64)
    jf = ad.jacfwd(f, argnums=(0, 1, 2, 3))(*xs)
    for k, x in enumerate(xs):
        for j in (0, x.size // 2, x.size - 1):
            ts = [np.zeros(y.shape) for y in xs]
            ts[k].flat[j] = 1.0
            column = np.asarray(ad.jvp(f, xs, ts)[1])
            close(np.asarray(jf[k]).reshape(-1, x.size)[:, j].reshape(column.shape), column, (1e-14, 1e-15))


# ---------------------------------------------------------------------------------------------
# the functional API
# ---------------------------------------------------------------------------------------------
def test_grad_and_value_and_grad():
    x = np.array([1.0, -2.0, 3.0])
    g = ad.grad(lambda u: (u * u).sum())(x)
    assert isinstance(g, ad.Tensor) and np.array_equal(np.asarray(g), 2 * x)
    value, g = ad.value_and_grad(lambda u: (u * u).sum())(x)
    assert value.item() == 14.0 and np.array_equal(np.asarray(g), 2 * x)
    # one-element outputs count as scalars
    assert np.array_equal(np.asarray(ad.grad(lambda u: u.sum(keepdims=True))(x)), np.ones(3))
    # Python numbers and lists are inputs too
    assert ad.grad(lambda u: u * u * u)(2.0).item() == 12.0
    assert np.array_equal(np.asarray(ad.grad(lambda u: (3.0 * u).sum())([1, 2])), [3.0, 3.0])


def test_argnums_tuple_and_negative():
    def f(a, b, c):
        return (a * b + c).sum()

    a, b, c = np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])
    ga, gc_ = ad.grad(f, argnums=(0, 2))(a, b, c)
    assert np.array_equal(np.asarray(ga), b) and np.array_equal(np.asarray(gc_), np.ones(2))
    assert np.array_equal(np.asarray(ad.grad(f, argnums=-2)(a, b, c)), a)
    assert np.array_equal(np.asarray(ad.grad(f, argnums=[1])(a, b, c)[0]), a)
    value, (gb,) = ad.value_and_grad(f, argnums=(1,))(a, b, c)
    assert value.item() == 22.0 and np.array_equal(np.asarray(gb), a)
    ja, jc = ad.jacfwd(lambda a, b, c: a * b + c, argnums=(0, 2))(a, b, c)
    assert np.array_equal(np.asarray(ja), np.diag(b)) and np.array_equal(np.asarray(jc), np.eye(2))
    ja, jc = ad.jacrev(lambda a, b, c: a * b + c, argnums=(0, 2))(a, b, c)
    assert np.array_equal(np.asarray(ja), np.diag(b)) and np.array_equal(np.asarray(jc), np.eye(2))


def test_has_aux_returns_value_aux_and_grad():
    def loss(w, x):
        pred = x @ w
        return (pred * pred).mean(), pred

    w, x = np.array([1.0, -1.0]), np.array([[1.0, 2.0], [3.0, 5.0]])
    (value, aux), g = ad.value_and_grad(loss, has_aux=True)(w, x)
    pred = x @ w
    assert value.item() == (pred ** 2).mean()
    assert isinstance(aux, ad.Tensor) and np.array_equal(np.asarray(aux), pred)
    close(g, x.T @ pred, (1e-15, 1e-15))
    g2, aux2 = ad.grad(loss, has_aux=True)(w, x)
    assert np.array_equal(np.asarray(g2), np.asarray(g)) and np.array_equal(np.asarray(aux2), pred)


def test_vjp_fn_can_be_called_several_times():
    x = np.array([0.5, -1.0, 2.0])
    out, vjp_fn = ad.vjp(lambda u: ad.sin(u) * u, x)
    first = vjp_fn(np.ones(3))
    assert isinstance(first, tuple) and len(first) == 1
    for _ in range(3):
        again = vjp_fn(np.ones(3))
        assert np.array_equal(np.asarray(again[0]), np.asarray(first[0]))
    expected = np.cos(x) * x + np.sin(x)
    close(first[0], expected, (1e-15, 1e-15))
    close(vjp_fn(np.array([2.0, 0.0, 1.0]))[0], expected * [2.0, 0.0, 1.0], (1e-15, 1e-15))
    close(out, np.sin(x) * x, (0, 0))


def test_vjp_with_several_primals_returns_one_gradient_each():
    a, b = np.array([[1.0, 2.0]]), np.array([[3.0], [4.0]])
    out, vjp_fn = ad.vjp(lambda p, q: p @ q, a, b)
    ga, gb = vjp_fn(np.array([[2.0]]))
    assert np.array_equal(np.asarray(ga), 2 * b.T) and np.array_equal(np.asarray(gb), 2 * a.T)


def test_transformations_leave_the_callers_tensors_and_grads_alone():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    W = ad.tensor([[1.0, 0.5], [0.0, 2.0]], requires_grad=True)   # closed over, like a model parameter
    f = lambda u: ad.tanh(W @ u)          # noqa: E731
    ad.grad(lambda u: f(u).sum())(x)
    ad.jacfwd(f)(x)
    ad.jacrev(f)(x)
    ad.jvp(f, (x,), (np.ones(2),))
    ad.vjp(f, x)[1](np.ones(2))
    assert x.grad is None and W.grad is None
    assert x.is_leaf and np.array_equal(x.numpy(), [1.0, 2.0])
    # and the caller's own graph still works afterwards
    y = f(x).sum()
    y.backward()
    close(x.grad, (1 - np.tanh(W.numpy() @ [1.0, 2.0]) ** 2) @ W.numpy(), (1e-15, 1e-15))


def test_results_detach_from_the_graph():
    out, t = ad.jvp(ad.exp, (np.array([1.0]),), (np.array([1.0]),))
    assert not out.requires_grad and not t.requires_grad
    value, g = ad.value_and_grad(lambda u: u.sum())(np.ones(2))
    assert not value.requires_grad and not g.requires_grad


def test_transformations_work_inside_no_grad():
    x = np.array([1.0, 2.0])
    with ad.no_grad():
        g = ad.grad(lambda u: (u ** 3).sum())(x)
        j = ad.jacfwd(ad.sin)(x)
        assert not ad.is_grad_enabled()
    close(g, 3 * x ** 2, (1e-15, 1e-15))
    close(j, np.diag(np.cos(x)), (1e-15, 1e-15))


def test_float32_stays_float32():
    x = np.array([1.0, 2.0], np.float32)
    assert ad.grad(lambda u: (u * u).sum())(x).dtype == F32
    out, t = ad.jvp(ad.tanh, (x,), (np.ones(2, np.float32),))
    assert out.dtype == t.dtype == F32
    assert ad.jacfwd(ad.tanh)(x).dtype == ad.jacrev(ad.tanh)(x).dtype == F32
    # a list tangent takes its primal's dtype, as a literal would
    assert ad.jvp(ad.tanh, (x,), ([1.0, 0.0],))[1].dtype == F32


def test_identity_constant_and_unused_inputs():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    for jac in (ad.jacfwd, ad.jacrev):
        assert np.array_equal(np.asarray(jac(lambda u: u)(x)), np.eye(4).reshape(2, 2, 2, 2))
        # a constant output: zeros, and the warning that it does not depend on the input (issue 12)
        with pytest.warns(UserWarning, match="does not depend on the differentiated input"):
            assert np.array_equal(np.asarray(jac(lambda u: ad.ones((3,)))(x)), np.zeros((3, 2, 2)))
        with pytest.warns(UserWarning, match="does not depend on the differentiated input"):
            assert np.array_equal(np.asarray(jac(lambda u: np.ones(3))(x)), np.zeros((3, 2, 2)))
        ju, jv = jac(lambda u, v: v * 2.0, argnums=(0, 1))(x, np.ones(3))
        assert np.array_equal(np.asarray(ju), np.zeros((3, 2, 2)))
        assert np.array_equal(np.asarray(jv), 2 * np.eye(3))
    with pytest.warns(UserWarning, match="does not depend on the differentiated input"):
        assert np.array_equal(np.asarray(ad.grad(lambda u, v: v.sum(), argnums=0)(x, np.ones(2))), np.zeros((2, 2)))


def test_eight_dimensional_tensors():
    # k directions of an 8-d tensor would need 9 axes: the sweeps fall back to (k, size) rows
    x = np.random.default_rng(3).standard_normal((1, 2, 1, 2, 1, 1, 2, 1))
    f = lambda u: ad.sin(u) * 2.0          # noqa: E731
    close(ad.jvp(f, (x,), (np.ones(x.shape),))[1], 2 * np.cos(x), (1e-15, 1e-15))
    close(ad.vjp(f, x)[1](np.ones(x.shape))[0], 2 * np.cos(x), (1e-15, 1e-15))
    s = lambda u: f(u).sum()               # noqa: E731
    close(ad.jacfwd(s)(x), 2 * np.cos(x), (1e-15, 1e-15))
    close(ad.jacrev(s)(x), 2 * np.cos(x), (1e-15, 1e-15))
    # a Jacobian with more than 8 axes cannot be a tensor
    with pytest.raises(ValueError, match=r"Jacobian of shape \(1, 2, 1, 2, 1, 1, 2, 1, 1, 2.*16 dimensions"):
        ad.jacfwd(f)(x)


def test_long_chain_sweeps_loop_without_recursion():
    n = 100_000

    def chain(u):
        for _ in range(n):
            u = u * 1.00001
        return u

    x = np.array([1.0, 2.0])
    _, t = ad.jvp(chain, (x,), (np.array([1.0, -1.0]),))
    close(t, np.array([1.0, -1.0]) * 1.00001 ** n, (1e-10, 1e-12))
    close(ad.grad(lambda u: chain(u).sum())(x), np.full(2, 1.00001 ** n), (1e-10, 1e-12))


def test_sweeps_release_everything_they_allocate():
    f, xs = _composite_inputs("mlp2_softmax", F64)

    def run():
        ad.jacfwd(f, argnums=(0, 1))(*xs)
        ad.jacrev(f, argnums=(0, 1))(*xs)
        ad.jvp(f, xs, [np.ones(x.shape) for x in xs])
        ad.vjp(f, *xs)[1](np.ones((2, 3)))
        ad.value_and_grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2, 3))(*xs)

    run()
    gc.collect()
    before = ad.tape_stats()
    for _ in range(50):
        run()
    gc.collect()
    after = ad.tape_stats()
    assert after["live_nodes"] == before["live_nodes"]
    assert after["live_bytes"] == before["live_bytes"]


def test_transformations_on_another_thread():
    import threading
    x = np.array([0.3, -0.7])
    expected = np.asarray(ad.jacrev(ad.tanh)(x))
    results = {}

    def worker():
        results["fwd"] = np.asarray(ad.jacfwd(ad.tanh)(x))
        results["rev"] = np.asarray(ad.jacrev(ad.tanh)(x))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert np.array_equal(results["fwd"], expected) and np.array_equal(results["rev"], expected)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_tangent_shape_or_dtype_mismatch_names_both():
    x = np.array([1.0, 2.0])
    with pytest.raises(ValueError, match=r"tangent 0 has shape \(3,\).*primal 0 has shape \(2,\)"):
        ad.jvp(ad.sin, (x,), (np.ones(3),))
    with pytest.raises(ValueError, match=r"dtype float32.*dtype float64"):
        ad.jvp(ad.sin, (x,), (np.ones(2, np.float32),))
    with pytest.raises(ValueError, match=r"dtype float64.*dtype float32"):
        ad.jvp(ad.sin, (x.astype(np.float32),), (ad.tensor([1.0, 1.0]),))
    with pytest.raises(ValueError, match="2 primals but 1 tangents"):
        ad.jvp(ad.add, (x, x), (x,))
    with pytest.raises(TypeError, match="tuples"):
        ad.jvp(ad.sin, x, x)
    with pytest.raises(TypeError, match="real numbers"):
        ad.jvp(ad.sin, (x,), (np.ones(2, complex),))


def test_cotangent_shape_or_dtype_mismatch_names_both():
    _, vjp_fn = ad.vjp(lambda u: u * 2.0, np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*shape \(2, 3\)"):
        vjp_fn(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"float32.*float64"):
        vjp_fn(np.ones((2, 3), np.float32))


def test_grad_of_a_non_scalar_points_to_jacrev_and_vjp():
    with pytest.raises(TypeError, match=r"shape \(3,\).*jacrev.*vjp"):
        ad.grad(ad.sin)(np.ones(3))
    with pytest.raises(TypeError, match="jacrev"):
        ad.value_and_grad(lambda u: u * 2.0)(np.ones(2))


@pytest.mark.parametrize("transform", [ad.grad, ad.value_and_grad, ad.jacfwd, ad.jacrev])
def test_argnums_out_of_range_or_malformed(transform):
    f = lambda a, b: (a * b).sum()        # noqa: E731
    x = np.ones(2)
    with pytest.raises(ValueError, match="argnums 2 is out of range.*2 positional arguments"):
        transform(f, argnums=2)(x, x)
    with pytest.raises(ValueError, match="argnums -3 is out of range"):
        transform(f, argnums=(0, -3))(x, x)
    with pytest.raises(ValueError, match="same argument twice"):
        transform(f, argnums=(0, -2))(x, x)
    with pytest.raises(TypeError, match="argnums must be an int or a tuple of ints"):
        transform(f, argnums=1.0)(x, x)
    with pytest.raises(TypeError, match="argnums must be an int or a tuple of ints"):
        transform(f, argnums=True)(x, x)


def test_malformed_outputs():
    with pytest.raises(TypeError, match="has_aux=True, f must return a pair"):
        ad.value_and_grad(lambda u: u.sum(), has_aux=True)(np.ones(2))
    with pytest.raises(TypeError, match="single Tensor"):
        ad.jacfwd(lambda u: (u, u))(np.ones(2))
    with pytest.raises(TypeError, match="must return a Tensor"):
        ad.jacrev(lambda u: "no")(np.ones(2))


def _c_jvp(root, leaves, tangents, k):
    out = ffi.new("int64_t *")
    check(lib.ad_jvp(root._h, len(leaves), ffi.new("int64_t[]", [t._h for t in leaves]),
                     ffi.new("int64_t[]", [t._h for t in tangents]), k, out))
    return _wrap(out[0])


def _c_vjp_status(root, cotangent, leaves):
    # tensors are bound by the caller: a temporary Tensor would release its node before the call
    res = ffi.new("int64_t[]", len(leaves))
    status = lib.ad_vjp(root._h, cotangent._h, len(leaves), ffi.new("int64_t[]", [t._h for t in leaves]), res)
    for i in range(len(leaves) if status == 0 else 0):
        _wrap(res[i])
    return status, ffi.string(lib.ad_last_error()).decode()


def test_c_api_checks_its_inputs():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    t = ad.tensor([[1.0, 0.0]])
    assert np.array_equal(_c_jvp(y, [x], [t], 1).numpy(), [2.0])
    assert np.array_equal(_c_jvp(y, [x], [ad.tensor([1.0, 0.0]).reshape(1, 2)], 1).numpy(), [2.0])
    with pytest.raises(ValueError, match="at least 1"):
        _c_jvp(y, [x], [t], 0)
    with pytest.raises(ValueError, match=r"tangent 0 has shape \(1, 2\).*2 direction\(s\)"):
        _c_jvp(y, [x], [t], 2)
    with pytest.raises(ValueError, match="same tensor as input 0"):
        _c_jvp(y, [x, x], [t, t], 1)
    c = ad.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        _c_jvp(y, [c], [t], 1)
    two = ad.tensor([1.0, 2.0])            # two cotangents of the 0-d output: fine
    assert _c_vjp_status(y, two, [x])[0] == 0
    bad = ad.tensor([[1.0, 2.0], [3.0, 4.0]])
    status, message = _c_vjp_status(y, bad, [x])
    assert status == -lib.AD_ERR_VALUE and "cotangent has shape (2, 2)" in message


def test_sweeps_through_a_released_graph_say_retain_graph():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    h = ad.sin(x)
    y = (h * h).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        _c_jvp(y, [x], [ad.tensor([[1.0, 0.0]])], 1)
    seed = ad.tensor([1.0])
    status, message = _c_vjp_status(y, seed, [x])
    assert status == -lib.AD_ERR_RUNTIME and "retain_graph" in message


def test_a_computed_input_counts_as_independent_in_both_sweeps():
    # z = y * x with y = 2x: seeding y as an input makes it independent of x, so dz/dx = y and
    # dz/dy = x in forward and reverse mode alike (not the total derivative 4x through y)
    x = ad.tensor([1.5, -2.0], requires_grad=True)
    y = x * 2.0
    z = y * x
    ones, zeros = ad.tensor([[1.0, 1.0]]), ad.tensor([[0.0, 0.0]])
    assert np.array_equal(_c_jvp(z, [x, y], [ones, zeros], 1).numpy(), [[3.0, -4.0]])
    assert np.array_equal(_c_jvp(z, [x, y], [zeros, ones], 1).numpy(), [[1.5, -2.0]])
    res = ffi.new("int64_t[]", 2)
    seed = ad.tensor([[1.0, 1.0]])
    check(lib.ad_vjp(z._h, seed._h, 2, ffi.new("int64_t[]", [x._h, y._h]), res))
    gx, gy = _wrap(res[0]), _wrap(res[1])
    assert np.array_equal(gx.numpy(), [[3.0, -4.0]]) and np.array_equal(gy.numpy(), [[1.5, -2.0]])
    # with x alone, reverse mode follows every path: the total derivative 4x
    res1 = ffi.new("int64_t[]", 1)
    check(lib.ad_vjp(z._h, seed._h, 1, ffi.new("int64_t[]", [x._h]), res1))
    assert np.array_equal(_wrap(res1[0]).numpy(), [[6.0, -8.0]])
    assert np.array_equal(_c_jvp(z, [x], [ones], 1).numpy(), [[6.0, -8.0]])
