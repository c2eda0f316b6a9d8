"""Transforms compose to any order (issue 12): grad of grad, jvp of grad, jacfwd of jacrev, ...,
backward(create_graph=True) and ad.autograd.grad, with no perturbation confusion and no silent zero.

Driven by both op tables (tests/op_table.py ROWS and test_ops_models.CASES, as collected in
test_forward_mode.OP_CASES) at their smooth samples, in float64. Each case becomes a scalar
function of one flat vector z (its inputs concatenated; F(z) = sum(w * op(inputs)) with a fixed
random w), so every composition acts on the same function:
  - grad(z -> <grad F(z), v>) equals central differences of grad F along v, and jvp(grad F) along
    v and ad.hvp (the numeric forward-over-reverse sweep) equal it to 1e-10;
  - for cases of at most JAC_MAX inputs, hessian, jacfwd(jacrev), jacrev(jacrev), jacrev(jacfwd) and
    jacfwd(jacfwd) agree to 1e-10;
  - third order on a few smooth ops against central differences of the second (ad.hvp).

Tolerances (rtol, atol), as test_forward_mode.close: |a - e| <= atol * max(1, max|e|) + rtol * |e|.
  Compositions against each other: (1e-10, 1e-11). They evaluate the same second derivative by
    different sweeps (recorded rules vs the C second-order terms), i.e. the same formulas in a
    different association and summation order: observed differences are ~1e-15 relative.
  Against central differences of the first derivative, step h = 1e-5 on the unit direction v:
    (1e-6, 1e-7). Truncation is h^2/6 |g'''| ~ 2e-11 |g'''| and round-off ~eps |g| / h ~ 1e-11 |g|;
    the samples sit away from singularities, but third derivatives of exp or reciprocal reach
    ~1e3 there, so the margin is kept as test_forward_mode's CD_TOL.
  Third order against differences of the second: (1e-5, 1e-6), one derivative further along the
    same argument (the fourth derivative enters the truncation error).
"""
import gc
import warnings
import zlib

import numpy as np
import pytest

import pyautodiff as ad
from test_scale import rss_bound, rss_bytes
from test_forward_mode import OP_CASES, close

F64 = np.dtype(np.float64)
COMPOSE_TOL = (1e-10, 1e-11)
CD_TOL = (1e-6, 1e-7)
CD_STEP = 1e-5
THIRD_TOL = (1e-5, 1e-6)
JAC_MAX = 12          # inputs of the cases whose full Hessian is taken five ways
HVP_MAX = 4096        # inputs of the cases the directional second derivatives run on


# ---------------------------------------------------------------------------------------------
# every line of the "Why" block
# ---------------------------------------------------------------------------------------------
def test_why_block():
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # and no independence warning on the way
        assert ad.grad(ad.grad(lambda x: x ** 3))(2.0).item() == 12.0
        _, t = ad.jvp(ad.grad(lambda x: (x ** 3).sum()), (np.array([1., 2.]),), (np.ones(2),))
        np.testing.assert_array_equal(t.numpy(), [6., 12.])
        h = ad.jacfwd(ad.jacrev(lambda x: (x ** 3).sum()))(np.array([1., 2.]))
        np.testing.assert_array_equal(h.numpy(), np.diag([6., 12.]))
        g = ad.grad(lambda x: ad.value_and_grad(lambda y: (y * y).sum())(x)[0])(np.array([1., 2.]))
        np.testing.assert_array_equal(g.numpy(), [2., 4.])
        x = ad.tensor([1., 2.], requires_grad=True)
        x.sum().backward(create_graph=True)
        np.testing.assert_array_equal(x.grad.numpy(), [1., 1.])
        x.grad = None      # the recorded grad refers to x's graph: clear it (as in PyTorch)


def test_higher_orders_of_one_variable():
    x = 0.7
    d = [np.sin(x), np.cos(x), -np.sin(x), -np.cos(x), np.sin(x)]
    f = ad.sin
    for k in range(1, 5):
        f = ad.grad(f)
        assert abs(f(x).item() - d[k]) < 1e-15, k
    assert ad.grad(ad.grad(ad.grad(lambda x: x ** 4)))(2.0).item() == 48.0
    # every pair of the scalar transforms, second order, and a third order through each
    f3 = lambda x: (x ** 3).sum()
    x = np.array([1.0, 2.0])
    d2 = np.diag(6 * x)
    for outer in (ad.jacfwd, ad.jacrev):
        for inner in (ad.jacfwd, ad.jacrev, ad.grad):
            np.testing.assert_allclose(outer(inner(f3))(x).numpy(), d2, rtol=1e-15)
    np.testing.assert_allclose(ad.jacfwd(ad.hessian(f3))(x).numpy(),
                               np.einsum("i,ij,ik->ijk", np.full(2, 6.0), np.eye(2), np.eye(2)))
    # hvp inside grad: d/dx <H(x) v, u> = 6 u v, x^0
    u, v = np.array([1.0, -1.0]), np.array([0.5, 2.0])
    g = ad.grad(lambda y: (ad.hvp(f3, (y,), (v,))[1][0] * u).sum())(x)
    np.testing.assert_allclose(g.numpy(), 6 * u * v)


# ---------------------------------------------------------------------------------------------
# perturbation confusion, closures, pytrees and argnums at two levels
# ---------------------------------------------------------------------------------------------
def test_no_perturbation_confusion_reverse():
    # d/dx [x * d/dy (x + y)] = d/dx [x * 1] = 1 (2 if the two levels were confused)
    assert ad.grad(lambda x: x * ad.grad(lambda y: x + y)(1.0))(1.0).item() == 1.0
    # the inner transform applied to the outer variable itself: d/dx [d/dy (x y)]|y=x = d/dx x = 1
    assert ad.grad(lambda x: ad.grad(lambda y: x * y)(x))(3.0).item() == 1.0
    # a tensor on the user's tape as the inner input
    x = ad.tensor(3.0, requires_grad=True)
    g = ad.grad(lambda y: x * y)(x)            # = x, recorded
    g.backward()
    assert g.item() == 3.0 and x.grad.item() == 1.0


def test_no_perturbation_confusion_forward():
    inner = lambda x: ad.jvp(lambda y: x + y, (1.0,), (1.0,))[1]
    out, t = ad.jvp(lambda x: x * inner(x), (1.0,), (1.0,))
    assert out.item() == 1.0 and t.item() == 1.0
    _, t = ad.jvp(lambda x: ad.jvp(lambda y: x * y, (x,), (1.0,))[1], (3.0,), (1.0,))
    assert t.item() == 1.0
    # mixed: reverse over forward and forward over reverse
    assert ad.grad(lambda x: x * inner(x))(1.0).item() == 1.0
    assert ad.jvp(lambda x: x * ad.grad(lambda y: x + y)(1.0), (1.0,), (1.0,))[1].item() == 1.0


def test_closures_over_outer_variables():
    # d/dx sum_i d/dy (x y^2)|y=c = d/dx (2 x c) summed = 2 sum(c)
    c = np.array([1.0, 2.0, 3.0])
    g = ad.grad(lambda x: ad.grad(lambda y: (x * y ** 2).sum())(c).sum())(0.5)
    assert abs(g.item() - 2 * c.sum()) < 1e-14
    # a closed-over parameter that requires grad: the gradient's dependence on W is kept
    W = ad.tensor([1.0, 2.0], requires_grad=True)
    x = np.array([3.0, 4.0])
    g = ad.grad(lambda x: (x * x * W).sum())(x)           # 2 x W
    (g * W).sum().backward()                              # d/dW sum(2 x W^2) = 4 x W
    np.testing.assert_array_equal(W.grad.numpy(), 4 * x * W.numpy())
    # under no_grad nothing outside is differentiated through: the numeric path, a plain result
    with ad.no_grad():
        g = ad.grad(lambda x: (x * x * W).sum())(x)
    assert not g.requires_grad
    # at top level with nothing on the tape around it, the result is plain numbers (fast path)
    g = ad.grad(lambda x: (x ** 3).sum())(x)
    assert not g.requires_grad
    # ... also when it was computed through an inner transform
    g = ad.grad(lambda x: ad.grad(lambda y: (y ** 3).sum())(x).sum())(x)
    assert not g.requires_grad
    np.testing.assert_array_equal(g.numpy(), 6 * x)


def test_pytrees_and_argnums_at_two_levels():
    def loss(p, q, scale):
        return scale * ((p["w"] * q[0]) ** 2).sum() + (p["b"] * q[1]).sum()

    p = {"w": np.array([1.0, 2.0]), "b": np.array([0.5])}
    q = (np.array([3.0, -1.0]), np.array([2.0]))

    def inner(p, q):                        # d loss / d q (argnums=1: a tuple of arrays)
        gq = ad.grad(loss, argnums=1)(p, q, 2.0)
        return (gq[0] ** 2).sum() + gq[1].sum()

    # gq0 = 4 w^2 q0, gq1 = b; inner = sum(16 w^4 q0^2) + b
    gp, gq = ad.grad(inner, argnums=(0, 1))(p, q)
    w, q0 = p["w"], q[0]
    np.testing.assert_allclose(gp["w"].numpy(), 64 * w ** 3 * q0 ** 2, rtol=1e-15)
    np.testing.assert_allclose(gp["b"].numpy(), [1.0])
    np.testing.assert_allclose(gq[0].numpy(), 32 * w ** 4 * q0, rtol=1e-15)
    np.testing.assert_allclose(gq[1].numpy(), [0.0])
    # the Hessian of a function of a dict, nested: jacfwd/jacrev of a dict entry of grad == hessian
    f = lambda p: ((p["w"] ** 3).sum() * p["b"]).sum()
    H = ad.hessian(f)(p)
    for outer in (ad.jacfwd, ad.jacrev):
        for a in ("w", "b"):
            for b in ("w", "b"):
                block = outer(lambda u: ad.grad(f)({**p, b: u})[a])(p[b])
                np.testing.assert_allclose(block.numpy(), H[a][b].numpy(), rtol=1e-14)
    # jacobians return Tensors: a container output is a clear TypeError naming the transform
    with pytest.raises(TypeError, match="jacfwd: f must return a Tensor, got dict"):
        ad.jacfwd(ad.grad(f))(p)
    # has_aux at the inner level
    g = ad.grad(lambda x: ad.grad(lambda y: ((y ** 2).sum(), y), has_aux=True)(x)[0].sum())(np.ones(3))
    np.testing.assert_array_equal(g.numpy(), 2 * np.ones(3))


def test_vjp_composes():
    f = lambda x: x ** 3
    x = np.array([1.0, 2.0])
    # d/dx <vjp(f)(x)(u), v> = 6 x u v
    u, v = np.array([1.0, 3.0]), np.array([2.0, -1.0])
    g = ad.grad(lambda y: (ad.vjp(f, y)[1](u)[0] * v).sum())(x)
    np.testing.assert_allclose(g.numpy(), 6 * x * u * v)
    # a cotangent that requires grad: the result is linear in it
    c = ad.tensor(u, requires_grad=True)
    (r,) = ad.vjp(f, x)[1](c)
    (r * v).sum().backward()
    np.testing.assert_allclose(c.grad.numpy(), 3 * x ** 2 * v)
    # the value vjp returns under an outer transform is differentiable
    g = ad.grad(lambda y: ad.vjp(f, y)[0].sum())(x)
    np.testing.assert_allclose(g.numpy(), 3 * x ** 2)


# ---------------------------------------------------------------------------------------------
# backward(create_graph=True) and ad.autograd.grad
# ---------------------------------------------------------------------------------------------
def _penalty_setup(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((5, 3)), rng.standard_normal((3, 4))


def _penalty_expected(x, W):
    """P = ||d/dx sum tanh(x W)||^2; by hand: s = 1 - tanh(xW)^2, gx = s W^T, q = gx W,
    dP/dW = 2 gx^T s - 4 x^T (q * tanh(xW) * s)."""
    t = np.tanh(x @ W)
    s = 1 - t ** 2
    gx = s @ W.T
    q = gx @ W
    return (gx ** 2).sum(), 2 * gx.T @ s - 4 * x.T @ (q * t * s)


def test_gradient_penalty_create_graph():
    xv, Wv = _penalty_setup()
    P_expected, dW_expected = _penalty_expected(xv, Wv)

    # 1. backward(create_graph=True), then backward of the penalty
    x = ad.tensor(xv, requires_grad=True)
    W = ad.tensor(Wv, requires_grad=True)
    ad.tanh(x @ W).sum().backward(create_graph=True)
    gx = x.grad
    assert gx.requires_grad
    W.grad = None
    P = (gx ** 2).sum()
    P.backward()
    assert abs(P.item() - P_expected) < 1e-12 * P_expected
    close(W.grad.numpy(), dW_expected, (1e-13, 1e-14), "dP/dW by backward(create_graph=True)")
    x.grad = W.grad = None

    # 2. ad.autograd.grad(create_graph=True)
    (gx,) = ad.autograd.grad(ad.tanh(x @ W).sum(), x, create_graph=True)
    (dW,) = ad.autograd.grad((gx ** 2).sum(), W)
    close(dW.numpy(), dW_expected, (1e-13, 1e-14), "dP/dW by autograd.grad")
    assert x.grad is None and W.grad is None       # autograd.grad leaves .grad alone

    # 3. the functional form: grad over W of the penalty of grad over x
    dW = ad.grad(lambda W: (ad.grad(lambda x: ad.tanh(x @ W).sum())(xv) ** 2).sum())(Wv)
    close(dW.numpy(), dW_expected, (1e-13, 1e-14), "dP/dW by nested ad.grad")


def test_double_backward_two_layer_mlp():
    rng = np.random.default_rng(1)
    xv, yv = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    params = {"W1": rng.standard_normal((4, 5)), "b1": rng.standard_normal(5),
              "W2": rng.standard_normal((5, 2)), "b2": rng.standard_normal(2)}
    vs = {k: rng.standard_normal(v.shape) for k, v in params.items()}

    def loss(p):
        h = ad.tanh(xv @ p["W1"] + p["b1"])
        return ((h @ p["W2"] + p["b2"] - yv) ** 2).mean()

    ps = {k: ad.tensor(v, requires_grad=True) for k, v in params.items()}
    grads = ad.autograd.grad(loss(ps), list(ps.values()), create_graph=True)
    sum(((g * vs[k]).sum() for g, k in zip(grads, ps)), ad.tensor(0.0)).backward()
    _, hv = ad.hvp(loss, (params,), (vs,))
    for k in ps:
        close(ps[k].grad.numpy(), hv[0][k].numpy(), COMPOSE_TOL, f"H v for {k}")
    # the same by backward(create_graph=True) twice
    for t in ps.values():
        t.grad = None
    loss(ps).backward(create_graph=True)
    first = {k: t.grad for k, t in ps.items()}
    for t in ps.values():
        t.grad = None
    sum(((first[k] * vs[k]).sum() for k in ps), ad.tensor(0.0)).backward()
    for k in ps:
        close(ps[k].grad.numpy(), hv[0][k].numpy(), COMPOSE_TOL, f"H v for {k}, backward twice")


def test_create_graph_accumulates_as_recorded_sums():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = (x ** 3).sum()
    y.backward(create_graph=True)
    y.backward(create_graph=True)               # x.grad = 6 x^2, recorded
    np.testing.assert_array_equal(x.grad.numpy(), 6 * x.numpy() ** 2)
    g = x.grad
    x.grad = None
    g.sum().backward()                          # d/dx sum(6 x^2) = 12 x
    np.testing.assert_array_equal(x.grad.numpy(), 12 * x.numpy())
    np.testing.assert_array_equal(g.numpy(), 6 * x.numpy() ** 2)    # unchanged by that backward


def test_autograd_grad_semantics():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    z = ad.tensor([3.0], requires_grad=True)
    y = (x ** 2).sum()
    with pytest.raises(RuntimeError, match="input 1 was not used"):
        ad.autograd.grad(y, (x, z))
    gx, gz = ad.autograd.grad(y, (x, z), allow_unused=True)
    np.testing.assert_array_equal(gx.numpy(), [2.0, 4.0])
    assert gz is None and not gx.requires_grad
    # several outputs with grad_outputs: the weighted sum
    a, b = x * 2.0, x ** 2
    (g,) = ad.autograd.grad([a, b], x, grad_outputs=[np.ones(2), np.array([1.0, -1.0])])
    np.testing.assert_array_equal(g.numpy(), [2 + 2, 2 - 4])
    # an input computed from another: the total derivative, as PyTorch
    u = x * 3.0
    out = (u * x).sum()                          # 3 x^2
    gx, gu = ad.autograd.grad(out, (x, u))
    np.testing.assert_array_equal(gx.numpy(), 6 * x.numpy())
    np.testing.assert_array_equal(gu.numpy(), x.numpy())
    with pytest.raises(RuntimeError, match="does not require grad"):
        ad.autograd.grad(y, ad.tensor([1.0]))
    with pytest.raises(RuntimeError, match="only for outputs with one element"):
        ad.autograd.grad(x * 2.0, x)


def test_backward_inside_a_transform_raises():
    def f(x):
        y = (x ** 2).sum()
        y.backward()
        return x.grad.sum()
    with pytest.raises(RuntimeError, match=r"backward\(\) without create_graph=True inside the function given to ad.grad"):
        ad.grad(f)(np.ones(2))

    def f2(x):                # the supported form: a recorded .grad is differentiable by the outer grad
        (x ** 3).sum().backward(create_graph=True)
        g = x.grad
        x.grad = None
        return g.sum()
    np.testing.assert_array_equal(ad.grad(f2)(np.array([1.0, 2.0])).numpy(), [6.0, 12.0])


# ---------------------------------------------------------------------------------------------
# never silently zero
# ---------------------------------------------------------------------------------------------
def test_output_independent_of_input_warns():
    x = np.array([1.0, 2.0])
    for transform, f in [(ad.grad, lambda x: ad.tensor(float(x.sum())) * 2.0),
                         (ad.grad, lambda x: ad.tensor(x.numpy()).sum()),
                         (ad.jacfwd, lambda x: ad.tensor(x.numpy()) * 2.0),
                         (ad.jacrev, lambda x: ad.tensor(x.numpy()) * 2.0)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = transform(f)(x)
        assert np.all(r.numpy() == 0)
        assert len(caught) == 1, [str(w.message) for w in caught]            # once per call
        assert caught[0].category is UserWarning
        assert "does not depend on the differentiated input" in str(caught[0].message)
        assert caught[0].filename == __file__          # points at the caller's line
    with pytest.warns(UserWarning, match="jvp: the output of f does not depend"):
        ad.jvp(lambda x: ad.tensor(x.numpy()).sum(), (x,), (x,))
    # also inside another transform, and with a closure over a requires-grad W
    W = ad.tensor([1.0, 1.0], requires_grad=True)
    with pytest.warns(UserWarning, match="grad: the output of f does not depend"):
        ad.grad(lambda x: (W * float(x.sum())).sum())(x)
    # an input that is one of several, unused, is an ordinary zero: no warning; nor is the second
    # derivative of a linear function (its gradient is an exact constant, recorded by the inner grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ad.grad(lambda x, y: (x * 2.0).sum(), argnums=(0, 1))(x, x)
        assert ad.grad(ad.grad(lambda x: 2.0 * x))(1.0).item() == 0.0
        assert np.all(ad.hessian(lambda x: (x * 3.0).sum())(x).numpy() == 0)
        assert np.all(ad.jacfwd(ad.jacrev(lambda x: (x * 3.0).sum()))(x).numpy() == 0)


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------
def test_gradient_penalty_training_runs_in_flat_memory():
    rng = np.random.default_rng(2)
    xv = rng.standard_normal((8, 3))
    gc.collect()
    base = ad.tape_stats()["live_nodes"]          # 0 when nothing else is alive on this thread
    W = ad.tensor(rng.standard_normal((3, 4)) * 0.5, requires_grad=True)
    opt = ad.optim.SGD([W], lr=1e-3)
    counts = []
    for step in range(1000):
        x = ad.tensor(xv, requires_grad=True)
        out = ad.tanh(x @ W).sum()
        (gx,) = ad.autograd.grad(out, x, create_graph=True)
        loss = out * 1e-3 + (gx ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (10, 999):
            del x, out, gx, loss
            counts.append(ad.tape_stats()["live_nodes"])
        if step == 10:
            rss0 = rss_bytes()
    # W and its grad, nothing else: the recorded sweep's nodes went with the step; and no memory
    # grew outside the tape's counters either (the bound and why: test_scale.rss_bound)
    assert counts == [base + 2, base + 2], (base, counts)
    assert rss_bytes() - rss0 < rss_bound(), rss_bytes() - rss0
    # the backward(create_graph=True) form too, with the recorded grad cleared each step
    for step in range(200):
        x = ad.tensor(xv, requires_grad=True)
        ad.tanh(x @ W).sum().backward(create_graph=True)
        pen = (x.grad ** 2).sum()
        x.grad = None          # x.grad's graph refers to x: clearing it breaks the cycle
        opt.zero_grad()
        pen.backward()
        opt.step()
    del x, pen
    opt.zero_grad()
    del opt, W
    gc.collect()
    assert ad.tape_stats()["live_nodes"] == base


# ---------------------------------------------------------------------------------------------
# the op tables: every smooth sample, float64
# ---------------------------------------------------------------------------------------------
def _scalarised(c):
    """(F, z0, v): F(z) = sum(w * op(inputs(z))) of the flat vector z of the case's inputs."""
    xs = [np.asarray(x, F64) for x in c.arrays(F64)]
    shapes = [x.shape for x in xs]
    starts = np.concatenate([[0], np.cumsum([x.size for x in xs])]).astype(int)
    rng = np.random.default_rng(zlib.crc32(repr((c.id, "compose")).encode()))
    out_shape = c.call(*[ad.tensor(x) for x in xs]).shape
    w = rng.standard_normal(out_shape)

    def F(z):
        parts = [z[int(a):int(b)].reshape(s) for a, b, s in zip(starts[:-1], starts[1:], shapes)]
        return (c.call(*parts) * w).sum()

    z0 = np.concatenate([x.reshape(-1) for x in xs]) if xs else np.zeros(0)
    v = rng.standard_normal(z0.shape)
    v /= max(np.linalg.norm(v), 1e-300)
    return F, z0, v, out_shape


def _usable(c, limit):
    if not c.smooth:
        return False
    xs = c.arrays(F64)
    n = sum(np.asarray(x).size for x in xs)
    return 0 < n <= limit and all(np.asarray(x).size for x in xs)


def _params(limit):
    return [pytest.param(c, id=c.id) for c in OP_CASES if _usable(c, limit)]


@pytest.mark.parametrize("c", _params(HVP_MAX))
def test_grad_of_grad_matches_differences(c):
    F, z0, v, out_shape = _scalarised(c)
    if 0 in out_shape:
        return
    g = ad.grad(F)
    second = ad.grad(lambda z: (g(z) * v).sum())(z0).numpy()           # reverse over reverse
    cd = (g(z0 + CD_STEP * v).numpy() - g(z0 - CD_STEP * v).numpy()) / (2 * CD_STEP)
    close(second, cd, CD_TOL, "grad(<grad F, v>) vs central differences of grad F")
    _, fwd = ad.jvp(g, (z0,), (v,))                                    # forward over reverse
    close(fwd.numpy(), second, COMPOSE_TOL, "jvp(grad F) vs grad(<grad F, v>)")
    _, (hv,) = ad.hvp(F, (z0,), (v,))                                  # the one-sweep C path
    close(hv.numpy(), second, COMPOSE_TOL, "hvp vs grad(<grad F, v>)")


@pytest.mark.parametrize("c", _params(JAC_MAX))
def test_hessians_by_every_composition_agree(c):
    F, z0, _, out_shape = _scalarised(c)
    if 0 in out_shape:
        return
    H = ad.hessian(F)(z0).numpy()
    for name, t in [("jacfwd(jacrev)", ad.jacfwd(ad.jacrev(F))), ("jacrev(jacrev)", ad.jacrev(ad.jacrev(F))),
                    ("jacrev(jacfwd)", ad.jacrev(ad.jacfwd(F))), ("jacfwd(jacfwd)", ad.jacfwd(ad.jacfwd(F))),
                    ("jacfwd(grad)", ad.jacfwd(ad.grad(F)))]:
        close(t(z0).numpy(), H, COMPOSE_TOL, f"{name} vs hessian")


THIRD_ORDER_OPS = ("exp", "tanh", "sin", "log", "sigmoid", "softplus", "power", "divide", "matmul",
                   "softmax", "logsumexp", "arctan", "erf", "mean", "prod")


def _third_order_cases():
    picked, seen = [], set()
    for c in OP_CASES:
        op = c.id.split("-")[0]
        if op in THIRD_ORDER_OPS and op not in seen and _usable(c, 64):
            picked.append(c)
            seen.add(op)
    return picked


@pytest.mark.parametrize("c", [pytest.param(c, id=c.id) for c in _third_order_cases()])
def test_third_order_matches_differences_of_second(c):
    F, z0, v, out_shape = _scalarised(c)
    if 0 in out_shape:
        return
    hv = lambda z: ad.grad(lambda y: (ad.grad(F)(y) * v).sum())(z)      # H(z) v, recorded
    third = ad.grad(lambda z: (hv(z) * v).sum())(z0).numpy()            # d/dz <H(z) v, v>
    hvp = lambda z: ad.hvp(F, (z,), (v,))[1][0].numpy()
    cd = (hvp(z0 + CD_STEP * v) - hvp(z0 - CD_STEP * v)) / (2 * CD_STEP)   # = T(z)[v, v, .] by symmetry
    close(third, cd, THIRD_TOL, "third derivative vs central differences of the second")
    # forward over reverse over reverse gives the same
    _, t = ad.jvp(hv, (z0,), (v,))
    close(t.numpy(), third, COMPOSE_TOL, "jvp(H v) vs grad(<H v, v>)")


def test_third_order_cases_cover_the_named_ops():
    ops = {c.id.split("-")[0] for c in _third_order_cases()}
    assert len(ops) >= 10, sorted(ops)


def test_fourth_order_through_structural_ops():
    """d^4/dt^4 of a composite of matmul, reductions, indexing, concatenate/stack/split, where,
    clip, max, softmax, logsumexp, power and an nn loss along a line x0 + t v, by grad four times,
    against central differences of the third derivative (step 1e-4: truncation h^2/6 |f^(6)| and
    round-off eps |f^(3)| / h, both below 1e-8 here; tolerance (1e-5, 1e-6) as third order)."""
    rng = np.random.default_rng(3)
    x0, v = rng.standard_normal(6), rng.standard_normal(6)
    M = rng.standard_normal((6, 3))
    target = np.array([0, 2])

    def f(t):
        x = x0 + t * v
        a, b = ad.split(x, 2)
        y = ad.concatenate([a * b, ad.clip(x, -3.0, 3.0)[::2]])
        y = ad.where(np.array([1, 1, 0, 1, 1, 1], bool), y, ad.stack([x[0], x[1]]).sum())
        z = ad.softmax(ad.reshape(y, (2, 3)) ** 2, axis=1)
        loss = ad.nn.functional.cross_entropy(ad.log(z + 1.0) @ M[:3, :3], target)
        return loss + ad.max(x ** 3) * 0.1 + ad.logsumexp(x @ M) * 0.5

    d3 = ad.grad(ad.grad(ad.grad(f)))
    d4 = ad.grad(d3)(0.0).item()
    h = 1e-4
    cd = (d3(h).item() - d3(-h).item()) / (2 * h)
    assert abs(d4 - cd) <= 1e-6 * max(1.0, abs(cd)) + 1e-5 * abs(cd), (d4, cd)
    # forward mode for the last step agrees
    _, t4 = ad.jvp(d3, (0.0,), (1.0,))
    assert abs(t4.item() - d4) <= 1e-10 * max(1.0, abs(d4))


def test_recorded_grads_do_not_keep_their_leaves_alive():
    # backward(create_graph=True) gives x a grad computed from x (a reference cycle, as in
    # PyTorch); dropping the last Tensor of x frees both, without clearing x.grad first. The
    # cotangent that is itself a leaf of the graph (s.grad would be s) is stored as a copy.
    gc.collect()
    base = ad.tape_stats()["live_nodes"]
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward(create_graph=True)
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])
    s = ad.tensor([0.5, -1.0], requires_grad=True)
    (x + s).backward(grad=s, create_graph=True)
    np.testing.assert_array_equal(s.grad.numpy(), [0.5, -1.0])
    np.testing.assert_array_equal(x.grad.numpy(), [2.5, 3.0])
    g = s.grad
    (g * g).sum().backward()          # s.grad is differentiable in s: d/ds sum(s^2) = 2 s
    np.testing.assert_array_equal(s.grad.numpy(), [1.5, -3.0])
    del x, s, g
    gc.collect()
    assert ad.tape_stats()["live_nodes"] == base
