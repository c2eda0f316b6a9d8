"""Second order: ad.hvp and ad.hessian (forward over reverse, csrc/sweep.c hvp_locked, and each
op's second-order term next to its VJP).

Per op (both op tables, every smooth float64 sample): the Hessian-vector product of
f = sum(w * op(inputs)) along a random direction, against central differences of the NumPy
reference gradient (tests/test_forward_mode.py's _reference_vjp), so the oracle is independent
of the C core. Then exact Hessians of functions whose Hessian is known in closed form, symmetry,
float32, containers, and the errors.

Tolerances (|c - ref| <= atol * max(1, max|ref|) + rtol * |ref|):
  hvp vs differences of the reference gradient: (1e-6, 1e-7), step h = 1e-5
    Truncation ~h^2 |f''''| ~ 1e-10; round-off ~eps |grad| / h ~ 2e-11 |grad|.
  closed forms, float64 (1e-13, 1e-14): a few roundings of the same formula.
  float32 against the float64 result (1e-5, 1e-6): ~10 float32 roundings through the graph.
"""
from collections import namedtuple

import numpy as np
import pytest

import pyautodiff as ad
from test_forward_mode import OP_CASES, _all_float64, _params, _reference_vjp, _seed, close

F64 = np.dtype(np.float64)
HVP_STEP = 1e-5
HVP_TOL = (1e-6, 1e-7)


@pytest.mark.parametrize("c", _params([c for c in OP_CASES if c.smooth and _all_float64(c)]))
def test_hvp_matches_differences_of_the_reference_gradient(c):
    xs = c.arrays(F64)
    rng = np.random.default_rng(_seed(c, "hvp"))
    with ad.no_grad():
        shape = c.call(*[ad.tensor(x) for x in xs]).shape
    w = rng.standard_normal(shape)
    vs = tuple(rng.standard_normal(x.shape) for x in xs)
    value, hv = ad.hvp(lambda *ts: (c.call(*ts) * w).sum(), xs, vs)
    h = HVP_STEP
    plus = _reference_vjp(c, [x + h * v for x, v in zip(xs, vs)], w)[1]
    minus = _reference_vjp(c, [x - h * v for x, v in zip(xs, vs)], w)[1]
    assert len(hv) == len(xs)
    for k, (got, p, m) in enumerate(zip(hv, plus, minus)):
        assert got.shape == xs[k].shape and got.dtype == F64
        close(got, (np.asarray(p, np.float64) - m) / (2 * h), HVP_TOL, f"hvp of input {k}")
    with ad.no_grad():
        assert value.item() == pytest.approx(float((np.asarray(c.call(*[ad.tensor(x) for x in xs])) * w).sum()),
                                             rel=1e-12, abs=1e-12)


X = np.array([0.3, -0.7, 1.2, 0.05])
A = np.random.default_rng(1).standard_normal((4, 4))


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


CLOSED_FORMS = [
    ("cube", lambda v: (v ** 3).sum(), np.diag(6 * X)),
    ("quadratic form", lambda v: v @ (A @ v), A + A.T),
    ("logsumexp", ad.logsumexp, np.diag(_softmax(X)) - np.outer(_softmax(X), _softmax(X))),
    ("tanh", lambda v: ad.tanh(v).sum(), np.diag(-2 * np.tanh(X) * (1 - np.tanh(X) ** 2))),
    ("product", lambda v: v[0] * v[1] * v[2] * v[3],
     np.array([[0 if i == j else np.prod([X[k] for k in range(4) if k not in (i, j)]) for j in range(4)]
               for i in range(4)])),
    ("linear", lambda v: (v * 3.0 + 1.0).sum(), np.zeros((4, 4))),
]


@pytest.mark.parametrize("name, f, expected", CLOSED_FORMS, ids=[c[0] for c in CLOSED_FORMS])
def test_hessian_of_closed_forms(name, f, expected):
    H = ad.hessian(f)(X)
    assert H.shape == (4, 4) and H.dtype == F64
    close(H, expected, (1e-13, 1e-14), name)
    # hvp is the Hessian applied to a vector
    v = np.arange(4.0) - 1.5
    _, (hv,) = ad.hvp(f, (X,), (v,))
    close(hv, expected @ v, (1e-13, 1e-14), name)


def _mlp_loss(W1, b1, W2, x, labels):
    h = ad.tanh(x @ W1 + b1)
    logp = ad.log_softmax(h @ W2, axis=1)
    return -(logp * labels).sum() / x.shape[0] + 0.1 * (W1 ** 2).sum() + ad.sigmoid(b1).sum()


def _mlp_params(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3)).astype(dtype)
    labels = np.eye(4, dtype=dtype)[rng.integers(0, 4, 6)]
    return [rng.standard_normal(s).astype(dtype) for s in ((3, 5), (5,), (5, 4))], x, labels


def test_hessian_of_a_small_network_is_symmetric_and_matches_differences():
    (W1, b1, W2), x, labels = _mlp_params(np.float64)
    blocks = ad.hessian(_mlp_loss, argnums=(0, 1, 2))(W1, b1, W2, x, labels)
    sizes = [W1.size, b1.size, W2.size]
    H = np.block([[np.asarray(blocks[i][j]).reshape(sizes[i], sizes[j]) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-13)
    # each column against central differences of the gradient (C gradient, float64)
    flat = np.concatenate([W1.ravel(), b1, W2.ravel()])

    def gradient(z):
        parts = np.split(z, np.cumsum(sizes)[:-1])
        args = [parts[0].reshape(W1.shape), parts[1], parts[2].reshape(W2.shape)]
        g = ad.grad(_mlp_loss, argnums=(0, 1, 2))(*args, x, labels)
        return np.concatenate([np.asarray(t).ravel() for t in g])

    h = HVP_STEP
    for col in range(0, flat.size, 7):
        e = np.zeros(flat.size)
        e[col] = h
        close(H[:, col], (gradient(flat + e) - gradient(flat - e)) / (2 * h), HVP_TOL, f"column {col}")


def test_float32_hessian_matches_float64():
    p64, x64, l64 = _mlp_params(np.float64)
    p32, x32, l32 = _mlp_params(np.float32)
    H64 = ad.hessian(_mlp_loss)(*p64, x64, l64)
    H32 = ad.hessian(_mlp_loss)(*p32, x32, l32)
    assert H32.dtype == np.float32 and H32.shape == (3, 5, 3, 5)
    close(H32, H64, (1e-5, 1e-6), "float32 Hessian")


Params = namedtuple("Params", ["w", "b"])


def test_hvp_and_hessian_of_containers():
    def f(p):
        return (ad.tanh(p["layer"].w * X + p["layer"].b) ** 2).sum()

    params = {"layer": Params(np.array(0.7), np.array(-0.2))}
    _, (hv,) = ad.hvp(f, (params,), ({"layer": Params(np.array(1.0), np.array(0.0))},))
    H = ad.hessian(f)(params)
    # nested as JAX: H[a][b] is d2f / da db for leaves a, b
    assert H["layer"].w["layer"].b.shape == ()
    assert hv["layer"].w.item() == pytest.approx(H["layer"].w["layer"].w.item(), rel=1e-13)
    assert hv["layer"].b.item() == pytest.approx(H["layer"].b["layer"].w.item(), rel=1e-13)
    assert H["layer"].w["layer"].b.item() == pytest.approx(H["layer"].b["layer"].w.item(), rel=1e-13)


def test_inputs_the_function_ignores_have_zero_rows():
    H = ad.hessian(lambda a, b: (a ** 2).sum(), argnums=(0, 1))(np.ones(2), np.ones(3))
    np.testing.assert_array_equal(H[0][0].numpy(), 2 * np.eye(2))
    assert H[0][1].shape == (2, 3) and not np.asarray(H[0][1]).any()
    assert H[1][1].shape == (3, 3) and not np.asarray(H[1][1]).any()


def test_hvp_errors():
    with pytest.raises(TypeError, match=r"hvp: f must return a scalar .* shape \(4,\)"):
        ad.hvp(ad.tanh, (X,), (X,))
    with pytest.raises(TypeError, match=r"hessian: f must return a scalar"):
        ad.hessian(ad.tanh)(X)
    with pytest.raises(ValueError, match=r"hvp: tangent 0 has shape \(3,\) .* primal 0 has shape \(4,\)"):
        ad.hvp(ad.logsumexp, (X,), (np.ones(3),))
    with pytest.raises(ValueError, match="got 1 primals but 2 tangents"):
        ad.hvp(ad.logsumexp, (X,), (X, X))


def test_hessian_of_power_where_the_exponent_is_zero():
    # a**b at b = 0 is 1 for every a, yet d2/da db = a**(b-1) (1 + b log a) = 1/a there: a rule
    # that takes d/da as a constant 0 at b == 0 (to avoid 0 * inf at a = 0) must not lose it
    def f(v):
        return ad.power(v[0], v[1])
    H = ad.hessian(f)(np.array([2.0, 0.0]))
    close(H, np.array([[0.0, 0.5], [0.5, np.log(2.0) ** 2]]), (1e-13, 1e-14), "power at b = 0")
    # and at a = 0, b = 0 the exponent's and base's terms stay exact zeros where they are constant
    H0 = ad.hessian(lambda v: ad.power(v[0], v[1]))(np.array([0.0, 0.0]))
    assert H0[0, 0] == 0.0
