"""Grads that alias backward's cotangent (csrc/sweep.c backward_locked, csrc/tape.c "aliases").

out.backward(W) reads W in place; where the cotangent reaches a leaf unchanged (x + y, the blocks
of a concatenation or stack along its first axis) the leaf's grad is an alias of W's values, as
NumPy's hand-written VJP and PyTorch's views are, but copy-on-write: every in-place write to W, to
a view of W, or to the grad first gives the grad its own copy. These tests pin that no write on one
side is ever seen on the other, that accumulation never writes into W, and that the values are
the same as the copying path's, for every way a write can happen."""

import gc

import numpy as np
import pytest

import pyautodiff as ad

DTYPES = [np.float64, np.float32]


def _leaves(dtype, *shapes, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return arrays, [ad.tensor(a, requires_grad=True) for a in arrays]


def _seed(dtype, shape, seed=1):
    w = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return w, ad.tensor(w)


# Each case: a function of the leaves whose cotangent reaches every leaf unchanged (or as a block),
# and the NumPy reference VJP of it.
CASES = {
    "add": (((5, 3), (5, 3)), lambda x, y: x + y, lambda w: [w, w]),
    "sub": (((5, 3), (5, 3)), lambda x, y: x - y, lambda w: [w, -w]),
    "add3": (((4,), (4,), (4,)), lambda x, y, z: (x + y) + z, lambda w: [w, w, w]),
    "concat0": (((2, 3), (4, 3), (1, 3)), lambda *xs: ad.concatenate(list(xs), 0),
                lambda w: np.split(w, [2, 6], axis=0)),
    "stack0": (((3, 2), (3, 2)), lambda *xs: ad.stack(list(xs), 0), lambda w: [w[0], w[1]]),
    "concat1": (((2, 3), (2, 1)), lambda *xs: ad.concatenate(list(xs), 1),
                lambda w: np.split(w, [3], axis=1)),
}


def _run(case, dtype):
    shapes, fn, vjp = CASES[case]
    arrays, xs = _leaves(dtype, *shapes)
    out = fn(*xs)
    w, W = _seed(dtype, out.shape)
    out.backward(W)
    return xs, W, w, vjp(w)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_grads_equal_the_reference_and_the_seed_is_untouched(case, dtype):
    xs, W, w, ref = _run(case, dtype)
    for x, r in zip(xs, ref):
        assert x.grad.dtype == dtype
        np.testing.assert_array_equal(x.grad.numpy(), r)
    np.testing.assert_array_equal(W.numpy(), w)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_write_to_the_seed_is_not_seen_by_the_grads(case, dtype):
    for write in (lambda W: W.add_(1.0), lambda W: W.mul_(0.0), lambda W: W.fill_(7.0),
                  lambda W: W.copy_(ad.tensor(np.full(W.shape, 3.0, W.dtype)))):
        xs, W, w, ref = _run(case, dtype)
        with ad.no_grad():
            write(W)
        for x, r in zip(xs, ref):
            np.testing.assert_array_equal(x.grad.numpy(), r)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_write_through_a_view_of_the_seed_is_not_seen_by_the_grads(case):
    shapes, fn, vjp = CASES[case]
    _, xs = _leaves(np.float64, *shapes)
    out = fn(*xs)
    base = ad.tensor(np.random.default_rng(5).standard_normal(int(np.prod(out.shape))))
    W = base.reshape(out.shape)                 # the seed is a view: its storage is base
    w = W.numpy()
    out.backward(W)
    with ad.no_grad():
        base.add_(10.0)                         # through the storage, not through W
    for x, r in zip(xs, vjp(w)):
        np.testing.assert_array_equal(x.grad.numpy(), r)
    with ad.no_grad():
        W.data.mul_(0.0)                        # through another view (.data)
    for x, r in zip(xs, vjp(w)):
        np.testing.assert_array_equal(x.grad.numpy(), r)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_write_to_a_grad_is_seen_by_nothing_else(case, dtype):
    xs, W, w, ref = _run(case, dtype)
    g0 = xs[0].grad
    with ad.no_grad():
        g0.add_(1.0)
    np.testing.assert_array_equal(xs[0].grad.numpy(), ref[0] + 1)   # the grad itself changed
    np.testing.assert_array_equal(W.numpy(), w)
    for x, r in zip(xs[1:], ref[1:]):
        np.testing.assert_array_equal(x.grad.numpy(), r)


def test_copying_one_alias_into_another_copies_the_values():
    # both grads are blocks of one storage: equal storages must not be taken for equal values
    xs, W, w, ref = _run("stack0", np.float64)
    with ad.no_grad():
        xs[0].grad.copy_(xs[1].grad)
    np.testing.assert_array_equal(xs[0].grad.numpy(), ref[1])
    np.testing.assert_array_equal(xs[1].grad.numpy(), ref[1])
    np.testing.assert_array_equal(W.numpy(), w)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_second_backward_accumulates_without_writing_the_seed(case, dtype):
    shapes, fn, vjp = CASES[case]
    _, xs = _leaves(dtype, *shapes)
    out = fn(*xs)
    w, W = _seed(dtype, out.shape)
    out.backward(W, retain_graph=True)
    out.backward(W)
    for x, r in zip(xs, vjp(w)):
        np.testing.assert_array_equal(x.grad.numpy(), r + r)
    np.testing.assert_array_equal(W.numpy(), w)


def test_a_grad_held_by_the_caller_never_changes():
    (_, _), (x, y) = _leaves(np.float64, (6,), (6,))
    out = x + y
    w, W = _seed(np.float64, (6,))
    out.backward(W, retain_graph=True)
    held = x.grad
    out.backward(W)
    np.testing.assert_array_equal(held.numpy(), w)
    np.testing.assert_array_equal(x.grad.numpy(), 2 * w)


def test_an_input_reached_twice_accumulates_into_a_copy():
    # (x + y) + x: x takes the seed from the root, then adds the inner sum's share: into a copy
    (_, _), (x, y) = _leaves(np.float64, (7,), (7,))
    w, W = _seed(np.float64, (7,))
    ((x + y) + x).backward(W)
    np.testing.assert_array_equal(x.grad.numpy(), w + w)
    np.testing.assert_array_equal(y.grad.numpy(), w)
    np.testing.assert_array_equal(W.numpy(), w)
    # the same input twice in one concatenation: the second block adds into a copy of the first
    (a,), (xa,) = _leaves(np.float64, (2, 3))
    w2, W2 = _seed(np.float64, (4, 3))
    ad.concatenate([xa, xa], 0).backward(W2)
    np.testing.assert_array_equal(xa.grad.numpy(), w2[:2] + w2[2:])
    np.testing.assert_array_equal(W2.numpy(), w2)


def test_hooks_and_custom_rules_see_the_cotangent_but_cannot_write_the_seed():
    (_, _, _), (a, b, c) = _leaves(np.float64, (5,), (5,), (5,))
    w, W = _seed(np.float64, (5,))
    z = a + b
    z.register_hook(lambda g: g * 3)            # an interior node handed the seed
    a.register_hook(lambda g: g + 1)            # a leaf handed it
    (z + c).backward(W)
    np.testing.assert_array_equal(a.grad.numpy(), 3 * w + 1)
    np.testing.assert_array_equal(b.grad.numpy(), 3 * w)
    np.testing.assert_array_equal(c.grad.numpy(), w)
    np.testing.assert_array_equal(W.numpy(), w)

    class Twice(ad.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    (_, _), (p, q) = _leaves(np.float64, (5,), (5,))
    (Twice.apply(p) + q).backward(W)
    np.testing.assert_array_equal(p.grad.numpy(), 2 * w)
    np.testing.assert_array_equal(q.grad.numpy(), w)
    np.testing.assert_array_equal(W.numpy(), w)


def test_a_view_of_an_alias_is_a_view_of_the_grad_not_of_the_seed():
    xs, W, w, ref = _run("add", np.float64)
    v = xs[0].grad.reshape(-1)                  # the grad gets values of its own first
    with ad.no_grad():
        v.mul_(2.0)
    np.testing.assert_array_equal(xs[0].grad.numpy(), 2 * ref[0])   # a view of the grad: seen
    np.testing.assert_array_equal(W.numpy(), w)
    np.testing.assert_array_equal(xs[1].grad.numpy(), ref[1])
    d = xs[1].grad.data
    with ad.no_grad():
        d.add_(1.0)
    np.testing.assert_array_equal(xs[1].grad.numpy(), ref[1] + 1)
    np.testing.assert_array_equal(W.numpy(), w)


def test_a_seed_that_requires_grad_is_never_aliased():
    # its own grad could alias another tensor's values: a reference cycle
    (_, _), (x, y) = _leaves(np.float64, (4,), (4,))
    w = np.arange(4.0)
    W = ad.tensor(w, requires_grad=True)
    (x + y).backward(W)
    with ad.no_grad():
        W.add_(1.0)                             # an optimizer step, say
    np.testing.assert_array_equal(x.grad.numpy(), w)
    np.testing.assert_array_equal(y.grad.numpy(), w)
    # and one that starts requiring grad later gives its aliases copies first
    xs, W2, w2, ref = _run("add", np.float64)
    W2.requires_grad = True
    before = ad.tape_stats()["live_nodes"]
    del W2
    gc.collect()
    assert ad.tape_stats()["live_nodes"] == before - 1   # no alias keeps the seed alive now
    np.testing.assert_array_equal(xs[0].grad.numpy(), ref[0])


def test_the_seed_outlives_its_handle_and_nothing_leaks():
    gc.collect()
    base = ad.tape_stats()["live_nodes"]
    (_, _), (x, y) = _leaves(np.float64, (3, 2), (3, 2))
    out = x + y
    w, W = _seed(np.float64, (3, 2))
    out.backward(W)
    del W, out
    gc.collect()
    np.testing.assert_array_equal(x.grad.numpy(), w)     # the alias keeps W's values alive
    np.testing.assert_array_equal(y.grad.numpy(), w)
    x.grad = None
    y.grad = None
    del x, y
    gc.collect()
    assert ad.tape_stats()["live_nodes"] == base


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_optimizers_read_aliased_grads_and_update_only_the_parameters(opt):
    rng = np.random.default_rng(3)
    pa, pb = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    w = rng.standard_normal((2, 4))
    results = []
    for alias in (True, False):
        a, b = ad.tensor(pa, requires_grad=True), ad.tensor(pb, requires_grad=True)
        W = ad.tensor(w) if alias else ad.tensor(w.astype(np.float32))   # float32: a converted copy
        o = ad.optim.SGD([a, b], lr=0.1, momentum=0.9) if opt == "sgd" else ad.optim.Adam([a, b], lr=0.1)
        for _ in range(3):
            o.zero_grad()
            (a + b).backward(W)
            o.step()
        np.testing.assert_array_equal(W.numpy(), w.astype(W.dtype))
        results.append((a.numpy(), b.numpy()))
    # float32 w converted to float64 is not w: compare with a tolerance of its rounding only
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=0, atol=1e-6)


def test_the_seed_as_an_optimizer_parameter_is_updated_without_changing_the_grads():
    # a tensor that does not require grad can still be stepped by an optimizer it was given to
    (_, _), (x, y) = _leaves(np.float64, (4,), (4,))
    w = np.arange(4.0)
    W = ad.tensor(w)
    (x + y).backward(W)
    W.grad = ad.tensor(np.ones(4))
    ad.optim.SGD([W], lr=1.0).step()
    np.testing.assert_array_equal(W.numpy(), w - 1)
    np.testing.assert_array_equal(x.grad.numpy(), w)
    np.testing.assert_array_equal(y.grad.numpy(), w)


def test_grads_through_aliases_match_finite_differences_and_higher_order():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 2)), rng.standard_normal((2, 2))
    w = rng.standard_normal((5, 2))

    def f(x, y):
        return ad.sum(ad.concatenate([ad.tanh(x), y * y], 0) * ad.tensor(w))

    g = ad.grad(f, argnums=(0, 1))(ad.tensor(a), ad.tensor(b))
    np.testing.assert_allclose(g[0].numpy(), w[:3] * (1 - np.tanh(a) ** 2), rtol=1e-12)
    np.testing.assert_allclose(g[1].numpy(), 2 * b * w[3:], rtol=1e-12)
    # backward(W) on the same graph: the cotangent reaches the concatenation's blocks unchanged
    x, y = ad.tensor(a, requires_grad=True), ad.tensor(b, requires_grad=True)
    ad.concatenate([ad.tanh(x), y * y], 0).backward(ad.tensor(w))
    np.testing.assert_allclose(x.grad.numpy(), g[0].numpy(), rtol=1e-15)
    np.testing.assert_allclose(y.grad.numpy(), g[1].numpy(), rtol=1e-15)
    eps = 1e-6
    da = rng.standard_normal(a.shape)
    fd = (f(ad.tensor(a + eps * da), ad.tensor(b)).item() - f(ad.tensor(a - eps * da), ad.tensor(b)).item()) / (2 * eps)
    # central differences: truncation ~eps^2 = 1e-12, rounding ~1e-16 / eps = 1e-10
    assert abs(fd - np.sum(x.grad.numpy() * da)) < 1e-8
    # create_graph: the recorded sweep never aliases (its grads are recorded values)
    x2, y2 = ad.tensor(a, requires_grad=True), ad.tensor(b, requires_grad=True)
    out = ad.concatenate([x2 * x2, y2], 0)
    out.backward(ad.tensor(w), create_graph=True)
    ad.sum(x2.grad).backward()
    np.testing.assert_allclose(x2.grad.numpy(), 2 * a * w[:3] + 2 * w[:3], rtol=1e-12)


def test_a_graph_that_read_an_alias_stays_valid_after_the_seed_is_written():
    # the alias gets a copy of its own at the write, with the version the graph saved: no false
    # "modified by an in-place operation" error, and the graph's gradient uses the old values
    (_, _), (x, y) = _leaves(np.float64, (4,), (4,))
    w = np.arange(1.0, 5.0)
    W = ad.tensor(w)
    with ad.no_grad():
        W.mul_(1.0)                              # W's version is 1, not 0
    (x + y).backward(W)
    v = ad.tensor(np.full(4, 2.0), requires_grad=True)
    z = ad.sum(x.grad * v)                       # reads x.grad's values for v's gradient
    with ad.no_grad():
        W.add_(100.0)
    z.backward()
    np.testing.assert_array_equal(v.grad.numpy(), w)
    # a write to the alias itself after the graph read it is an error, as for any tensor
    z2 = ad.sum(y.grad * v)
    with ad.no_grad():
        y.grad.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        z2.backward()


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_reshape_hands_its_cotangent_down(dtype):
    # reshape's VJP is the cotangent read in the input's shape: the buffer passes down, and from
    # the seed the leaf's grad aliases it
    (a,), (x,) = _leaves(dtype, (3, 4))
    w, W = _seed(dtype, (2, 6))
    x.reshape(2, 6).backward(W)
    np.testing.assert_array_equal(x.grad.numpy(), w.reshape(3, 4))
    with ad.no_grad():
        W.mul_(0.0)
    np.testing.assert_array_equal(x.grad.numpy(), w.reshape(3, 4))
    # interior: tanh(x).reshape: the reshape's adjoint buffer becomes tanh's
    (a,), (x,) = _leaves(dtype, (3, 4))
    ad.sum(ad.tanh(x).reshape(12) * ad.tensor(w.reshape(12))).backward()
    # float32: the core's vectorised tanh and NumPy's differ by an ulp or two (1.2e-7 each)
    tol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(x.grad.numpy(), (1 - np.tanh(a) ** 2) * w.reshape(3, 4), rtol=tol)
    # broadcasting that keeps the size: (3,) + (1, 3) hands the (1, 3) cotangent to both
    (p, q), (xp, xq) = _leaves(dtype, (3,), (1, 3))
    w3, W3 = _seed(dtype, (1, 3))
    (xp + xq).backward(W3)
    np.testing.assert_array_equal(xp.grad.numpy(), w3.reshape(3))
    np.testing.assert_array_equal(xq.grad.numpy(), w3)


@pytest.mark.parametrize("case", ["add", "add3", "concat0", "stack0", "reshape"])
def test_grads_that_alias_the_seed_take_no_memory_of_their_own(case):
    # the point of the aliases: backward(W) through these ops allocates no gradient buffer
    n = 20_000
    shapes, fn = {
        "add": (((n,), (n,)), lambda x, y: x + y),
        "add3": (((n,), (n,), (n,)), lambda x, y, z: (x + y) + z),
        "concat0": (((n, 2), (n, 2)), lambda *xs: ad.concatenate(list(xs), 0)),
        "stack0": (((n,), (n,)), lambda *xs: ad.stack(list(xs), 0)),
        "reshape": (((n, 2),), lambda x: x.reshape(2, n)),
    }[case]
    _, xs = _leaves(np.float64, *shapes)
    out_shape = fn(*xs).shape
    _, W = _seed(np.float64, out_shape)
    gc.collect()
    before = ad.tape_stats()["live_bytes"]
    fn(*xs).backward(W)
    gc.collect()
    grown = ad.tape_stats()["live_bytes"] - before
    assert all(x.grad is not None for x in xs)
    assert grown < 8 * n // 4, f"{grown} bytes for grads of {len(xs)} x {8 * n * 2 // len(xs)} bytes"


def test_seeds_that_are_grads_roots_or_views_of_parameters():
    # a grad that aliases W, used as the next seed: the new grads alias W's values too
    xs, W, w, ref = _run("add", np.float64)
    (_, _), (p, q) = _leaves(np.float64, (5, 3), (5, 3))
    (p + q).backward(xs[0].grad)
    with ad.no_grad():
        W.add_(1.0)
        xs[0].grad.mul_(3.0)
    np.testing.assert_array_equal(p.grad.numpy(), w)
    np.testing.assert_array_equal(q.grad.numpy(), w)
    np.testing.assert_array_equal(xs[0].grad.numpy(), 3 * w)
    np.testing.assert_array_equal(xs[1].grad.numpy(), w)
    # the root as its own seed (it requires grad: read by the root's VJP only)
    (a, b), (x, y) = _leaves(np.float64, (4,), (4,))
    r = x + y
    r.backward(r)
    np.testing.assert_array_equal(x.grad.numpy(), a + b)
    np.testing.assert_array_equal(y.grad.numpy(), a + b)
    # .data of a parameter: a view whose storage requires grad, so never aliased
    (a, b), (x, y) = _leaves(np.float64, (4,), (4,))
    par = ad.tensor(np.arange(4.0), requires_grad=True)
    (x + y).backward(par.data)
    with ad.no_grad():
        par.add_(5.0)
    np.testing.assert_array_equal(x.grad.numpy(), np.arange(4.0))


def test_retain_grad_on_a_node_handed_the_seed():
    (_, _, _), (a, b, c) = _leaves(np.float64, (3,), (3,), (3,))
    w, W = _seed(np.float64, (3,))
    z = a + b
    z.retain_grad()
    (z + c).backward(W)
    with ad.no_grad():
        W.mul_(-1.0)
    np.testing.assert_array_equal(z.grad.numpy(), w)
    np.testing.assert_array_equal(a.grad.numpy(), w)
    np.testing.assert_array_equal(c.grad.numpy(), w)


def test_an_empty_seed_and_a_converted_seed():
    (_, _), (x, y) = _leaves(np.float64, (0, 3), (0, 3))
    (x + y).backward(ad.tensor(np.zeros((0, 3))))
    assert x.grad.shape == (0, 3) and y.grad.shape == (0, 3)
    (a, b), (x, y) = _leaves(np.float64, (3,), (3,))
    w32 = np.array([0.1, 0.2, 0.3], np.float32)
    W32 = ad.tensor(w32)
    (x + y).backward(W32)                    # float32 seed, float64 root: converted, not aliased
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad.numpy(), w32.astype(np.float64))
    with ad.no_grad():
        W32.add_(1.0)
    np.testing.assert_array_equal(y.grad.numpy(), w32.astype(np.float64))
