"""Reshapes are views (csrc/tape.c ad_node_new_view, csrc/kernels/layout.c reshape_to): the result
shares the input's values, as PyTorch's reshape of a contiguous tensor, so a reshape costs no copy
forward and its gradient is handed down unchanged. These tests pin the sharing (values, versions,
lifetime) and that every derivative through a view is the NumPy reference's."""

import gc

import numpy as np
import pytest

import pyautodiff as ad

DTYPES = [np.float64, np.float32]


def _reshapes(t):
    """Every public way to change a shape without moving values, each with NumPy's version."""
    return [
        (lambda u: u.reshape(3, 4), lambda a: a.reshape(3, 4)),
        (lambda u: ad.reshape(u, (2, -1)), lambda a: a.reshape(2, -1)),
        (lambda u: u.flatten(), lambda a: a.reshape(-1)),
        (lambda u: ad.expand_dims(u, 0), lambda a: a[None]),
        (lambda u: u.unsqueeze(1), lambda a: a[:, None]),
        (lambda u: ad.squeeze(u.reshape(1, 12, 1)), lambda a: a),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_reshape_shares_values_both_ways(dtype):
    for view, ref in _reshapes(None):
        a = ad.tensor(np.arange(12, dtype=dtype))
        v = view(a)
        np.testing.assert_array_equal(v.numpy(), ref(np.arange(12, dtype=dtype)))
        assert v.dtype == dtype
        with ad.no_grad():
            a.add_(1.0)                      # written through the base: the view sees it
        np.testing.assert_array_equal(v.numpy(), ref(np.arange(12, dtype=dtype) + 1))
        with ad.no_grad():
            v.mul_(2.0)                      # and through the view: the base sees it
        np.testing.assert_array_equal(a.numpy(), (np.arange(12, dtype=dtype) + 1) * 2)
        assert a._version == v._version == 2


def test_a_view_of_a_view_outlives_both_bases():
    a = ad.tensor(np.arange(24.0))
    b = a.reshape(4, 6)
    c = b.reshape(2, 3, 4)
    del a, b
    gc.collect()
    filler = [ad.tensor(np.full(24, -7.0)) for _ in range(4)]   # would take a freed buffer
    np.testing.assert_array_equal(c.numpy(), np.arange(24.0).reshape(2, 3, 4))
    del filler


def test_a_view_keeps_a_value_that_no_rule_reads():
    # x + y and v + 1 read no value in their rules, so a value of theirs is freed when its last
    # handle goes (tape.c drop_unread_value), unless a view still shares it; and a view going
    # must not free the buffer it shares
    x = ad.tensor(np.linspace(-1, 1, 30), requires_grad=True)
    y = ad.tensor(np.linspace(2, 3, 30), requires_grad=True)
    s = x + y
    v = s.reshape(5, 6)
    keep = s.reshape(30)
    loss = ((v + 1.0) * ad.tensor(np.arange(30.0).reshape(5, 6))).sum()
    del s
    gc.collect()
    del v
    gc.collect()
    filler = [ad.tensor(np.full(30, 99.0)) for _ in range(4)]   # would take a freed buffer
    np.testing.assert_array_equal(keep.numpy(), np.linspace(-1, 1, 30) + np.linspace(2, 3, 30))
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.arange(30.0))
    np.testing.assert_array_equal(y.grad.numpy(), np.arange(30.0))
    del filler


def test_views_free_everything_when_gone():
    gc.collect()
    before = ad.tape_stats()["live_nodes"]
    x = ad.tensor(np.ones((8, 8)), requires_grad=True)
    v = (x * 3).reshape(4, 16)
    w = v.reshape(-1).data
    (v * v).sum().backward()
    del x, v, w
    gc.collect()
    assert ad.tape_stats()["live_nodes"] == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_derivatives_through_views_match_numpy(dtype):
    rng = np.random.default_rng(3)
    xv = rng.standard_normal((3, 4)).astype(dtype)
    W = rng.standard_normal((2, 6)).astype(dtype)
    tol = {np.float64: 1e-13, np.float32: 1e-5}[dtype]

    def f(x):
        return (ad.tanh(x).reshape(2, 6) * ad.tensor(W)).reshape(-1).sum()

    x = ad.tensor(xv, requires_grad=True)
    f(x).backward()
    ref = (1 - np.tanh(xv) ** 2) * W.reshape(3, 4)
    np.testing.assert_allclose(x.grad.numpy(), ref, rtol=tol, atol=tol)
    # the reshape's own VJP hands the cotangent down: bit for bit the seed, reshaped
    y = ad.tensor(xv, requires_grad=True)
    y.reshape(12).backward(ad.tensor(W.reshape(12)))
    np.testing.assert_array_equal(y.grad.numpy(), W.reshape(3, 4))
    # forward mode and second order through the view
    t = rng.standard_normal((3, 4)).astype(dtype)
    _, tangent = ad.jvp(lambda u: u.reshape(12) ** 3, (ad.tensor(xv),), (ad.tensor(t),))
    np.testing.assert_allclose(tangent.numpy(), (3 * xv ** 2 * t).reshape(12), rtol=tol, atol=tol)
    hess = ad.hessian(lambda u: (u.reshape(2, 6) ** 3).sum())(ad.tensor(xv)).numpy()
    np.testing.assert_allclose(hess.reshape(12, 12), np.diag(6 * xv.reshape(12)), rtol=tol, atol=tol)


def test_finite_differences_through_a_view():
    x = ad.tensor(np.random.default_rng(5).standard_normal((2, 3, 2)), requires_grad=True)
    assert ad.gradcheck(lambda u: ad.sin(u.reshape(3, 4)) * u.reshape(4, 3).T, (x,))


def test_a_write_through_a_view_makes_a_saved_value_stale():
    w = ad.tensor(np.ones(6), requires_grad=True)
    a = ad.tensor(np.arange(6.0))
    v = a.reshape(2, 3)
    loss = (v.reshape(6) * w).sum()          # the product saves v's values for w's gradient
    with ad.no_grad():
        a.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        loss.backward()
    assert w.grad is None
    # the other way round: the graph read the base, the write went through the view
    b = ad.tensor(np.arange(6.0))
    loss = (b * w).sum()
    with ad.no_grad():
        b.reshape(3, 2).mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        loss.backward()


def test_a_recorded_update_leaves_the_view_alone():
    # with grad mode on, an update of a computed tensor is a new node (a functional update): the
    # view keeps the values the graph saw, and gradients flow through both
    x = ad.tensor(np.arange(4.0), requires_grad=True)
    a = x * 1.0
    v = a.reshape(2, 2)
    a.add_(10.0)
    np.testing.assert_array_equal(v.numpy(), [[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(a.numpy(), np.arange(4.0) + 10)
    (v.sum() + 2 * a.sum()).backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(4, 3.0))


def test_an_optimizer_step_is_seen_through_a_view():
    p = ad.tensor(np.ones((2, 3)), requires_grad=True)
    v = p.reshape(6)
    opt = ad.optim.SGD([p], lr=0.5)
    (p * ad.tensor(np.arange(6.0).reshape(2, 3))).sum().backward()
    opt.step()
    np.testing.assert_array_equal(v.numpy(), 1 - 0.5 * np.arange(6.0))
    assert v._version == p._version == 1


def test_data_of_a_view_is_that_view():
    a = ad.tensor(np.arange(6.0), requires_grad=True)
    v = a.reshape(2, 3)
    d = v.data
    assert d.shape == (2, 3) and not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), np.arange(6.0).reshape(2, 3))
    d[1, 2] = 50.0
    assert a.tolist()[5] == 50.0 and a._version == v._version == d._version == 1


def test_grads_never_alias_a_view():
    # a grad accumulates in place: if it shared the cotangent or a reshape of it, a second
    # backward would change the tensor the caller passed
    x = ad.tensor(np.zeros(6), requires_grad=True)
    seed = ad.tensor(np.arange(6.0).reshape(2, 3))
    x.reshape(2, 3).backward(seed)
    x.reshape(2, 3).backward(seed)
    np.testing.assert_array_equal(x.grad.numpy(), 2 * np.arange(6.0))
    np.testing.assert_array_equal(seed.numpy(), np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("drop_leaf_first", [True, False])
def test_a_recorded_grad_through_a_view_of_its_leaf_is_freed(drop_leaf_first):
    # backward(create_graph=True) through x.reshape gives x a grad that refers to the view, which
    # holds x as its storage: the cycle must go once no handle can read x.grad (found by the C API
    # fuzzer, seed 6; the views' storage references are now counted like consumers)
    gc.collect()
    base = ad.tape_stats()["live_nodes"]
    x = ad.tensor(np.array([0.5, -1.5]), requires_grad=True)
    v = x.reshape(2, 1)
    y = ad.sum(ad.transpose(v) * ad.transpose(v))
    if drop_leaf_first:
        del x                       # the grad is installed on a leaf no handle reaches
        y.backward(create_graph=True)
    else:
        y.backward(create_graph=True)
        np.testing.assert_allclose(x.grad.numpy(), [1.0, -3.0])
        del x
    del v, y
    gc.collect()
    assert ad.tape_stats()["live_nodes"] == base
