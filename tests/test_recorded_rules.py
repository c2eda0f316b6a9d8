"""Differentiable rules and the recorded sweeps (csrc/sweep.c ad_vjp_graph / ad_jvp_graph): every op's
VJP and JVP also exist as recorded ops, so a derivative is itself on a tape and can be
differentiated again.

Driven by both op tables (tests/op_table.py ROWS and test_ops_models.CASES, as collected in
test_forward_mode.OP_CASES), in float64 and float32, for every sample:
  (a) ad_vjp_graph equals ad_vjp (the numeric batched reverse sweep) for one random cotangent;
  (b) ad_jvp_graph equals ad_jvp for one tangent direction (partly exactly zero);
  (c) second order: the recorded gradient g(x, w) = J(x)^T w, differentiated by ad_vjp along v,
      equals ad.hvp of sum(w * f(x)) along v (forward over reverse, the C second-order terms),
      and its derivative w.r.t. the cotangent w equals ad_jvp of f along v;
  (d) the same second derivative taken by ad_vjp_graph again (rules of rules: third order and
      beyond use this path).

Second derivatives, (c) and (d), are compared at the smooth samples only; the edge samples (kinks,
infinities, domain ends) are compared at first order.

Tolerances: the row's own (test_forward_mode._tol: the looser of (1e-13, 1e-14) / (2e-6, 1e-6)
and the table's), since recorded and numeric rules evaluate the same formula in the same dtype
and differ only in association (g / cnt vs g * (1 / cnt)) and summation order. Second order
compares two different sweeps through a few more roundings: float32 gets (2e-5, 2e-6) at least.
"""
import zlib

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff._capi import check, ffi, lib
from pyautodiff.functional import _handles, _jvp_sweep, _rows, _vjp_sweep
from pyautodiff.tensor import _wrap

import op_table
import test_ops_models as op_models
from test_forward_mode import OP_CASES, _tangents, _tol, close

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
DTYPES = [F64, F32]

SECOND_ORDER_F32 = (2e-5, 2e-6)

# the reference op name of each case, in OP_CASES' order
_NAMES = ([r.ref for r in op_table.ROWS for _ in r.sample_list()] + [c[1] for c in op_models.CASES])
assert len(_NAMES) == len(OP_CASES)
CASES = list(zip(OP_CASES, _NAMES))


def _params(second_order=False):
    # second derivatives only where the function is smooth (as test_hessian.py): at kinks,
    # infinities and domain ends they are undefined, and the two sweeps' different but equally
    # valid orders of operations give NaN, inf or the limit there
    return [pytest.param(c, id=c.id) for c, name in CASES if c.smooth or not second_order]


def _seed(c, *extra):
    return zlib.crc32(repr((c.id, "recorded") + extra).encode())


def vjp_graph(out, cotangent, leaves):
    res = ffi.new("int64_t[]", max(len(leaves), 1))
    check(lib.ad_vjp_graph(out._h, cotangent._h, len(leaves), _handles(leaves), res))
    return [_wrap(res[i]) for i in range(len(leaves))]


def jvp_graph(out, leaves, tangents):
    res = ffi.new("int64_t *")
    check(lib.ad_jvp_graph(out._h, len(leaves), _handles(leaves), _handles(tangents), res))
    return _wrap(res[0])


def _setup(c, dtype):
    xs = c.arrays(dtype)
    leaves = [ad.tensor(x, requires_grad=True) for x in xs]
    out = c.call(*leaves)
    return xs, leaves, out


def _second_tol(c, dtype):
    rtol, atol = _tol(c.grad_tol, dtype)
    if dtype == F32:
        rtol, atol = max(rtol, SECOND_ORDER_F32[0]), max(atol, SECOND_ORDER_F32[1])
    return rtol, atol


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", _params())
def test_vjp_graph_matches_vjp(c, dtype):
    xs, leaves, out = _setup(c, dtype)
    w = np.random.default_rng(_seed(c, "w", str(dtype))).standard_normal(out.shape).astype(out.dtype)
    expected = _vjp_sweep(out, leaves, _rows(w[np.newaxis]))
    got = vjp_graph(out, ad.tensor(w), leaves)
    assert len(got) == len(xs)
    for k, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == xs[k].shape and g.dtype == xs[k].dtype, (g.shape, g.dtype, xs[k].shape, xs[k].dtype)
        close(g.numpy(), e.reshape(xs[k].shape), _tol(c.grad_tol, xs[k].dtype), f"gradient of input {k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", _params())
def test_jvp_graph_matches_jvp(c, dtype):
    xs, leaves, out = _setup(c, dtype)
    ts = _tangents(np.random.default_rng(_seed(c, "t", str(dtype))), xs)
    expected = _jvp_sweep(out, leaves, [_rows(t[np.newaxis]) for t in ts], 1)
    got = jvp_graph(out, leaves, [ad.tensor(t) for t in ts])
    assert got.shape == out.shape and got.dtype == out.dtype
    close(got.numpy(), expected.reshape(out.shape), _tol(c.value_tol, out.dtype, xs), "tangent")


def _second_order(c, dtype, recorded):
    """d/dx and d/dw of sum_k <g_k(x, w), v_k> with g = vjp_graph(f(x), w), by ad_vjp (numeric) or,
    with recorded, by ad_vjp_graph again; with the expected values from ad.hvp and ad_jvp."""
    xs, leaves, out = _setup(c, dtype)
    rng = np.random.default_rng(_seed(c, "second", str(dtype)))
    w = rng.standard_normal(out.shape).astype(out.dtype)
    vs = [rng.standard_normal(x.shape).astype(x.dtype) for x in xs]
    w_leaf = ad.tensor(w, requires_grad=True)
    grads = vjp_graph(out, w_leaf, leaves)
    wrt = leaves + [w_leaf]
    totals = [np.zeros(t.shape, np.float64) for t in wrt]
    for g, v in zip(grads, vs):
        if not g.requires_grad:      # a gradient that depends on nothing (a linear op's, for a constant w)
            continue
        if recorded:
            parts = [p.numpy() for p in vjp_graph(g, ad.tensor(v), wrt)]
        else:
            parts = [p.reshape(t.shape) for p, t in zip(_vjp_sweep(g, wrt, _rows(v[np.newaxis])), wrt)]
        for k, p in enumerate(parts):
            assert p.shape == wrt[k].shape and p.dtype == wrt[k].dtype
            totals[k] += p
    _, hv = ad.hvp(lambda *ts: (c.call(*ts) * w).sum(), xs, vs)
    jv = _jvp_sweep(out, leaves, [_rows(v[np.newaxis]) for v in vs], 1).reshape(out.shape)
    for k, x in enumerate(xs):
        close(totals[k], hv[k].numpy(), _second_tol(c, x.dtype), f"second derivative w.r.t. input {k}")
    # (the mean over an empty axis has a NaN tangent but an empty Jacobian: nothing to compare)
    if all(x.size for x in xs):
        close(totals[-1], jv, _second_tol(c, out.dtype), "derivative of the gradient w.r.t. the cotangent")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", _params(second_order=True))
def test_recorded_gradient_differentiates_to_hvp(c, dtype):
    _second_order(c, dtype, recorded=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", _params(second_order=True))
def test_recorded_gradient_of_recorded_gradient(c, dtype):
    _second_order(c, dtype, recorded=True)


# ---------------------------------------------------------------------------------------------
# named cases: closed forms, higher orders, semantics and errors
# ---------------------------------------------------------------------------------------------
def test_bilinear_form_second_order():
    """f(u, w) = u @ M @ w: grad_u = M w, d/dw <grad_u, v> = M^T v, a constant."""
    rng = np.random.default_rng(3)
    M = rng.standard_normal((3, 4))
    u = ad.tensor(rng.standard_normal(3), requires_grad=True)
    w = ad.tensor(rng.standard_normal(4), requires_grad=True)
    f = u @ (ad.tensor(M) @ w)
    gu, gw = vjp_graph(f, ad.tensor(np.array(1.0)), [u, w])
    close(gu.numpy(), M @ w.numpy(), (1e-14, 1e-15))
    close(gw.numpy(), M.T @ u.numpy(), (1e-14, 1e-15))
    v = rng.standard_normal(3)
    d_u, d_w = vjp_graph(gu, ad.tensor(v), [u, w])
    close(d_u.numpy(), np.zeros(3), (0, 0))
    close(d_w.numpy(), M.T @ v, (1e-14, 1e-15))
    assert not d_w.requires_grad     # M^T v depends on neither u nor w: all third derivatives are 0


def test_jvp_graph_of_jvp_graph_is_second_directional_derivative():
    """f(x) = x @ A @ x: the tangent along t is t A x + x A t, its derivative along s is t A s + s A t."""
    rng = np.random.default_rng(4)
    A = rng.standard_normal((3, 3))
    x = ad.tensor(rng.standard_normal(3), requires_grad=True)
    f = x @ (ad.tensor(A) @ x)
    t, s = rng.standard_normal(3), rng.standard_normal(3)
    ft = jvp_graph(f, [x], [ad.tensor(t)])
    xv = x.numpy()
    close(ft.numpy(), t @ A @ xv + xv @ A @ t, (1e-13, 1e-14))
    fts = _jvp_sweep(ft, [x], [_rows(s[np.newaxis])], 1).reshape(())
    close(fts, t @ A @ s + s @ A @ t, (1e-13, 1e-14))


def test_gather_scatter_add_pair_to_third_order():
    """gather's VJP is a scatter_add and scatter_add's a gather: repeated indices accumulate at every order."""
    x = ad.tensor(np.arange(4.0), requires_grad=True)
    y = x[[0, 2, 0, 3, 0]]
    w = ad.tensor(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), requires_grad=True)
    (g,) = vjp_graph(y, w, [x])
    close(g.numpy(), [9.0, 0.0, 2.0, 4.0], (0, 0))
    (gw,) = vjp_graph(g, ad.tensor(np.array([1.0, 10.0, 100.0, 1000.0])), [w])   # d/dw <g, v> = v[index]
    close(gw.numpy(), [1.0, 100.0, 1.0, 1000.0, 1.0], (0, 0))
    (gv,) = vjp_graph(gw, ad.tensor(np.ones(5)), [w])
    close(gv.numpy(), np.zeros(5), (0, 0))


def test_scatter_add_op():
    x = ad.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    idx = np.array([2, 0, 2], np.int64)
    h = lib.ad_scatter_add(x._h, 2, ffi.new("int64_t[]", [2, 2]), ffi.cast("int64_t *", idx.ctypes.data), 1)
    assert h > 0, check(h)
    y = _wrap(h)
    close(y.numpy(), [[2.0, 0.0], [4.0, 0.0]], (0, 0))
    y.backward(grad=np.array([[1.0, 2.0], [3.0, 4.0]]))
    close(x.grad.numpy(), [3.0, 1.0, 3.0], (0, 0))
    _, tangent = ad.jvp(lambda t: _wrap(lib.ad_scatter_add(t._h, 1, ffi.new("int64_t[]", [3]),
                                                           ffi.cast("int64_t *", idx.ctypes.data), 1)),
                        (np.array([1.0, 2.0, 3.0]),), (np.array([1.0, 1.0, 1.0]),))
    close(tangent.numpy(), [1.0, 0.0, 2.0], (0, 0))
    bad = np.array([0, 4, 1], np.int64)
    with pytest.raises(IndexError, match="scatter_add"):
        check(lib.ad_scatter_add(x._h, 1, ffi.new("int64_t[]", [4]), ffi.cast("int64_t *", bad.ctypes.data), 1))


def test_cotangent_and_inputs_independent_of_root():
    x = ad.tensor(np.ones((2, 3)), requires_grad=True)
    z = ad.tensor(np.ones(4), requires_grad=True)     # the root does not depend on it
    y = ad.sum(x, axis=1)
    cot = ad.tensor(np.array([2.0, 3.0]), requires_grad=True)
    gx, gz = vjp_graph(y, cot, [x, z])
    close(gx.numpy(), [[2.0] * 3, [3.0] * 3], (0, 0))
    close(gz.numpy(), np.zeros(4), (0, 0))
    assert gx.requires_grad          # a function of the cotangent
    (gc,) = vjp_graph(gx, ad.tensor(np.arange(6.0).reshape(2, 3)), [cot])
    close(gc.numpy(), [3.0, 12.0], (0, 0))
    t = jvp_graph(y, [z], [ad.tensor(np.ones(4))])
    close(t.numpy(), np.zeros(2), (0, 0))


def test_root_as_requested_input_and_non_leaf_input_is_independent():
    x = ad.tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = ad.reshape(x, (2, 1))
    y = ad.sum(ad.broadcast_to(h, (2, 3)))
    (gh,) = vjp_graph(y, ad.tensor(np.array(1.0)), [h])
    close(gh.numpy(), [[3.0], [3.0]], (0, 0))
    (gy,) = vjp_graph(y, ad.tensor(np.array(5.0)), [y])
    assert gy.item() == 5.0
    t = jvp_graph(y, [h, x], [ad.tensor(np.ones((2, 1))), ad.tensor(np.full(2, 100.0))])
    assert t.item() == 6.0           # x's tangent does not pass through h, which counts as independent


def test_recorded_sweeps_leave_no_nodes_behind_and_respect_no_grad():
    stats = ffi.new("ad_stats_t *")
    check(lib.ad_stats(stats))
    before = stats.live_nodes
    x = ad.tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    y = ad.softmax(x @ ad.tensor(np.ones((4, 2))), axis=0)
    root = ad.sum(ad.reshape(y, (6,)))
    with ad.no_grad():
        (g,) = vjp_graph(root, ad.tensor(np.array(1.0)), [x])
        assert lib.ad_grad_enabled() == 0          # the caller's mode is restored
    assert g.requires_grad           # recorded even under no_grad: the sweep turns grad mode on
    del root
    del g, y, x
    import gc
    gc.collect()
    check(lib.ad_stats(stats))
    assert stats.live_nodes == before


def test_errors():
    x = ad.tensor(np.ones(3), requires_grad=True)
    y = ad.sum(x)
    with pytest.raises(ValueError, match="vjp_graph: cotangent has shape"):
        vjp_graph(y, ad.tensor(np.ones(2)), [x])
    with pytest.raises(ValueError, match="vjp_graph: cotangent .* dtype float32"):
        vjp_graph(y, ad.tensor(np.array(1.0, np.float32)), [x])
    with pytest.raises(ValueError, match="jvp_graph: tangent 0 has shape"):
        jvp_graph(y, [x], [ad.tensor(np.ones(2))])
    with pytest.raises(RuntimeError, match="does not require grad"):
        vjp_graph(y, ad.tensor(np.array(1.0)), [ad.tensor(np.ones(3))])
    with pytest.raises(ValueError, match="same tensor"):
        jvp_graph(y, [x, x], [ad.tensor(np.ones(3))] * 2)
    z = ad.sum(x * 2.0)
    z.backward()
    with pytest.raises(RuntimeError, match="released"):
        vjp_graph(z, ad.tensor(np.array(1.0)), [x])


def test_branches_that_reach_no_requested_input_record_nothing():
    """Only nodes on a path to a requested input get contributions: the exp branch below needs no
    rule (and records nothing) when only x is asked for."""
    x = ad.tensor(np.array([1.0, 2.0]), requires_grad=True)
    z = ad.tensor(np.array([0.5]), requires_grad=True)
    y = ad.concatenate([ad.exp(z), x])
    (gx,) = vjp_graph(y, ad.tensor(np.array([7.0, 8.0, 9.0])), [x])
    close(gx.numpy(), [8.0, 9.0], (0, 0))


@pytest.mark.parametrize("name, f", [
    ("clip", lambda t: ad.clip(t, 0.5, 2.5)), ("max", lambda t: ad.max(t, axis=1)),
    ("maximum", lambda t: ad.maximum(t, 2.0)), ("relu", ad.relu), ("abs", ad.abs),
    ("sqrt", ad.sqrt), ("hardtanh", ad.hardtanh)])
def test_recorded_rules_keep_the_numeric_rules_at_edge_values(name, f):
    # an infinite cotangent, a NaN input and a zero cotangent where the derivative is inf: the
    # recorded rule gives the numeric VJP's numbers (NaN where IEEE says so, exact 0 where the rule
    # routes or the cotangent is 0), not whatever its ops happen to give
    x = np.array([[1.0, 5.0, 0.0], [np.nan, -1.0, 2.0]])
    for fill in (np.inf, 0.0, -2.0):
        xt = ad.tensor(x, requires_grad=True)
        y = f(xt)
        g = np.full(y.shape, fill)
        (numeric,) = _vjp_sweep(y, [xt], _rows(g[np.newaxis]))
        (recorded,) = ad.autograd.grad(y, xt, grad_outputs=ad.tensor(g), create_graph=True)
        np.testing.assert_array_equal(recorded.numpy(), np.asarray(numeric).reshape(x.shape), err_msg=f"{name}, g={fill}")
