"""The functional API on containers of arrays ("pytrees", as in JAX): dicts, tuples, namedtuples
and lists of Tensors/arrays are differentiated leaf by leaf and their derivatives come back in the
same structure. Derivatives are checked against closed forms and against the same call made with
the leaves as separate arguments."""
from collections import namedtuple

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff.numerical import numerical_jacobian

Layer = namedtuple("Layer", ["W", "b"])
RNG = np.random.default_rng(0)
X = RNG.standard_normal((5, 3))
W0, B0 = RNG.standard_normal((3, 4)), RNG.standard_normal(4)


def _loss(params, x):
    return ad.tanh(x @ params["W"] + params["b"]).sum()


def _closed_form(W, b, x):
    t = np.tanh(x @ W + b)
    return x.T @ (1 - t * t), (1 - t * t).sum(axis=0)


def test_grad_of_a_dict_is_a_dict_with_the_same_keys():
    params = {"W": W0, "b": ad.tensor(B0)}
    g = ad.grad(_loss)(params, X)
    assert type(g) is dict and list(g) == ["W", "b"]
    dW, db = _closed_form(W0, B0, X)
    np.testing.assert_allclose(g["W"].numpy(), dW, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(g["b"].numpy(), db, rtol=1e-13, atol=1e-13)
    # the caller's container and tensors are left alone
    assert params["W"] is W0 and params["b"].grad is None and not params["b"].requires_grad


def test_nested_containers_and_namedtuples_keep_their_structure():
    params = {"layers": [Layer(W0, B0), Layer(np.eye(4), np.zeros(4))], "scale": (np.array(2.0),)}

    def loss(p, x):
        h = x
        for layer in p["layers"]:
            h = ad.tanh(h @ layer.W + layer.b)
        return p["scale"][0] * h.sum()

    g = ad.grad(loss)(params, X)
    assert isinstance(g["layers"], list) and len(g["layers"]) == 2
    assert all(type(layer) is Layer for layer in g["layers"])
    assert isinstance(g["scale"], tuple) and g["scale"][0].shape == ()
    # the same derivatives as with every leaf passed as its own argument
    flat = ad.grad(lambda W1, b1, W2, b2, s: loss({"layers": [Layer(W1, b1), Layer(W2, b2)], "scale": (s,)}, X),
                   argnums=(0, 1, 2, 3, 4))(W0, B0, np.eye(4), np.zeros(4), np.array(2.0))
    got = [g["layers"][0].W, g["layers"][0].b, g["layers"][1].W, g["layers"][1].b, g["scale"][0]]
    for a, b in zip(got, flat):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_list_of_numbers_is_still_array_data():
    g = ad.grad(lambda v: (v * v).sum())([1.0, 2.0, 3.0])
    assert isinstance(g, ad.Tensor)
    np.testing.assert_array_equal(g.numpy(), [2.0, 4.0, 6.0])
    g = ad.grad(lambda v: (v * v).sum())([[1.0, 2.0], [3.0, 4.0]])   # nested numbers: 2-D data
    assert isinstance(g, ad.Tensor) and g.shape == (2, 2)


def test_value_and_grad_with_aux_and_a_second_argnum():
    def loss(p, x):
        out = _loss(p, x)
        return out, {"n": x.shape[0]}

    (value, aux), (gp, gx) = ad.value_and_grad(loss, argnums=(0, 1), has_aux=True)({"W": W0, "b": B0}, X)
    t = np.tanh(X @ W0 + B0)
    assert value.item() == pytest.approx(t.sum(), rel=1e-13) and aux == {"n": 5}
    assert list(gp) == ["W", "b"] and isinstance(gx, ad.Tensor)
    np.testing.assert_allclose(gx.numpy(), (1 - t * t) @ W0.T, rtol=1e-13, atol=1e-13)


def test_vjp_and_jvp_of_a_dict_primal():
    params = {"W": W0, "b": B0}
    out, vjp_fn = ad.vjp(lambda p: ad.tanh(X @ p["W"] + p["b"]), params)
    g = RNG.standard_normal(out.shape)
    (gp,) = vjp_fn(g)
    t = np.tanh(X @ W0 + B0)
    np.testing.assert_allclose(gp["W"].numpy(), X.T @ (g * (1 - t * t)), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(gp["b"].numpy(), (g * (1 - t * t)).sum(axis=0), rtol=1e-13, atol=1e-13)

    dW, db = RNG.standard_normal(W0.shape), RNG.standard_normal(B0.shape)
    _, tangent = ad.jvp(lambda p: ad.tanh(X @ p["W"] + p["b"]), (params,), ({"b": db, "W": dW},))
    np.testing.assert_allclose(tangent.numpy(), (1 - t * t) * (X @ dW + db), rtol=1e-13, atol=1e-13)
    # <g, J v> == <J^T g, v>: the two modes agree through the container
    lhs = float((g * tangent.numpy()).sum())
    rhs = float((gp["W"].numpy() * dW).sum() + (gp["b"].numpy() * db).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)


@pytest.mark.parametrize("tangent, message", [
    ({"W": W0}, r"tangent 0 must be a dict with keys \['W', 'b'\] like its primal, got a dict with "
                r"keys \['W'\]"),
    ([W0, B0], r"must be a dict with keys \['W', 'b'\] like its primal, got a list"),
])
def test_jvp_tangent_of_another_structure_is_a_value_error(tangent, message):
    with pytest.raises(ValueError, match=message):
        ad.jvp(lambda p: (p["W"].sum() + p["b"].sum()), ({"W": W0, "b": B0},), (tangent,))


def test_jvp_structure_error_says_where():
    with pytest.raises(ValueError, match=r"tangent 0 at \[1\] must be a tuple of 2 items like its primal, "
                                         r"got a tuple of 1"):
        ad.jvp(lambda p: p[0][0].sum(), (((W0, ad.tensor(B0)), (W0, B0)),), (((W0, B0), (W0,)),))


@pytest.mark.parametrize("jac", [ad.jacrev, ad.jacfwd])
def test_jacobians_of_a_tuple_argument(jac):
    def f(pair):
        a, b = pair
        return ad.tanh(a * b.sum()) + a

    a, b = RNG.standard_normal(3), RNG.standard_normal((2, 2))
    ja, jb = jac(f)((ad.tensor(a), b))
    assert ja.shape == (3, 3) and jb.shape == (3, 2, 2)
    na, nb = numerical_jacobian(lambda u, v: f((u, v)), a, b)
    np.testing.assert_allclose(ja.numpy(), na, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(jb.numpy(), nb.reshape(3, 2, 2), rtol=1e-7, atol=1e-8)
