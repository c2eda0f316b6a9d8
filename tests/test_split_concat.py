"""The paths issue 15 made faster for split, slices, stack and concatenate, against NumPy.

autograd.grad of several outputs runs one reverse sweep from all of them (ad_vjp_many), so the
parts of a split add into one adjoint; these tests pin its sums (outputs that share an input,
that feed each other, that repeat, that are inputs) to NumPy's, bit for bit where the sum has one
term per element."""
import numpy as np
import pytest

import pyautodiff as ad

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("sections", [4, [1, 3], [0, 2, 2, 5]])
def test_split_grad_of_all_parts_is_their_concatenation(dtype, axis, sections):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 5)).astype(dtype) if sections == 4 else rng.normal(size=(5, 5, 5)).astype(dtype)
    if sections == 4 and x.shape[axis] % 4:
        x = rng.normal(size=(8, 8, 8)).astype(dtype)
    xt = ad.tensor(x, requires_grad=True)
    parts = ad.split(xt, sections, axis)
    want = np.split(x, sections, axis)
    assert [p.shape for p in parts] == [w.shape for w in want]
    for p, w in zip(parts, want):
        np.testing.assert_array_equal(p.numpy(), w)
    cots = [rng.normal(size=w.shape).astype(dtype) for w in want]
    # cotangents as Tensors (read in place) and as arrays give the same gradient
    (g,) = ad.autograd.grad(parts, xt, grad_outputs=[ad.tensor(c) for c in cots])
    (g2,) = ad.autograd.grad(parts, xt, grad_outputs=cots)
    assert g.dtype == dtype and g.shape == x.shape and not g.requires_grad
    np.testing.assert_array_equal(g.numpy(), np.concatenate(cots, axis))
    np.testing.assert_array_equal(g2.numpy(), np.concatenate(cots, axis))
    # some parts only: the others' blocks are zero
    (g3,) = ad.autograd.grad(parts[:1], xt, grad_outputs=cots[:1])
    want3 = np.concatenate([cots[0]] + [np.zeros_like(c) for c in cots[1:]], axis)
    np.testing.assert_array_equal(g3.numpy(), want3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_of_outputs_that_feed_repeat_and_are_inputs(dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4)).astype(dtype)
    w1, w2, w3, w4 = (rng.normal(size=(3, 4)).astype(dtype) for _ in range(4))
    xt = ad.tensor(x, requires_grad=True)
    y = xt * 2.0
    z = ad.tanh(y)                      # z is computed from y: y's cotangent adds to what z sends
    outs = [z, y, y, xt]                # y twice, and the input itself as an output
    (g,) = ad.autograd.grad(outs, xt, grad_outputs=[ad.tensor(w) for w in (w1, w2, w3, w4)])
    t = np.tanh(2 * x.astype(np.float64))
    want = 2 * (w1 * (1 - t * t) + w2 + w3) + w4
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(g.numpy(), want, rtol=tol, atol=tol)
    # against one sweep per output, summed (the path before ad_vjp_many)
    single = sum(ad.autograd.grad(o, xt, grad_outputs=ad.tensor(w))[0].numpy()
                 for o, w in zip(outs, (w1, w2, w3, w4)))
    np.testing.assert_allclose(g.numpy(), single, rtol=tol, atol=tol)
    # the cotangents were only read
    np.testing.assert_array_equal(np.asarray(ad.tensor(w2)), w2)


def test_grad_of_several_outputs_with_two_inputs_and_a_chain():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    v = ad.tensor([3.0, -1.0], requires_grad=True)
    a, b = x * v, x ** 2
    gx, gv = ad.autograd.grad([a, b], (x, v), grad_outputs=[np.ones(2), np.array([1.0, -1.0])])
    np.testing.assert_array_equal(gx.numpy(), [3.0 + 2.0, -1.0 - 4.0])
    np.testing.assert_array_equal(gv.numpy(), [1.0, 2.0])
    # an input computed from another (total derivatives, one sweep per input) and several outputs
    u = x * 3.0
    gx, gu = ad.autograd.grad([(u * x).sum(), u.sum()], (x, u))
    np.testing.assert_array_equal(gx.numpy(), 6 * x.numpy() + 3.0)
    np.testing.assert_array_equal(gu.numpy(), x.numpy() + 1.0)
    # an input no output depends on
    w = ad.tensor([1.0], requires_grad=True)
    gx, gw = ad.autograd.grad([a.sum(), b.sum()], (x, w), allow_unused=True)
    np.testing.assert_array_equal(gx.numpy(), v.numpy() + 2 * x.numpy())
    assert gw is None


def test_grad_of_several_outputs_checks_each_cotangent():
    x = ad.tensor(np.ones((2, 3)), requires_grad=True)
    a, b = ad.split(x, [1], 0)
    with pytest.raises(ValueError, match=r"grad_outputs\[1\] has shape \(2, 3\)"):
        ad.autograd.grad([a, b], x, grad_outputs=[np.ones((1, 3)), ad.tensor(np.ones((2, 3)))])
    with pytest.raises(ValueError, match=r"grad_outputs\[0\] .*dtype float32"):
        ad.autograd.grad([a, b], x, grad_outputs=[ad.tensor(np.ones((1, 3), np.float32)), np.ones((1, 3))])


def test_vjp_many_c_api_errors():
    from pyautodiff._capi import ffi, lib
    x = ad.tensor(np.ones(3), requires_grad=True)
    y = x * 2.0
    bad = ad.tensor(np.ones(2))
    res = ffi.new("int64_t[]", 1)
    st = lib.ad_vjp_many(1, ffi.new("int64_t[]", [y._h]), ffi.new("int64_t[]", [bad._h]), 1,
                         ffi.new("int64_t[]", [x._h]), res)
    assert st != 0
    assert "cotangent 0 has shape (2)" in ffi.string(lib.ad_last_error()).decode() or \
        "cotangent 0 has shape" in ffi.string(lib.ad_last_error()).decode()
    assert lib.ad_vjp_many(0, ffi.NULL, ffi.NULL, 1, ffi.new("int64_t[]", [x._h]), res) != 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_reads_its_seed_in_place_and_leaves_it_alone(dtype):
    """backward(grad) reads grad's values as the root's adjoint (no copy) unless the root's buffer
    could be written or handed on; in every case grad keeps its values and stays usable."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 5)).astype(dtype)
    w = rng.normal(size=(2, 5)).astype(dtype)
    xt = ad.tensor(x, requires_grad=True)
    wt = ad.tensor(w)
    xt[1:3].backward(wt)                                  # read in place
    np.testing.assert_array_equal(xt.grad.numpy(), np.concatenate([np.zeros((1, 5)), w, np.zeros((1, 5))]).astype(dtype))
    np.testing.assert_array_equal(wt.numpy(), w)
    # the root hands its adjoint on (x + y): the seed is copied, never taken
    yt = ad.tensor(x, requires_grad=True)
    xt.grad = None
    (xt * 1.0 + yt).backward(ad.tensor(x))
    np.testing.assert_array_equal(yt.grad.numpy(), x)
    np.testing.assert_array_equal(xt.grad.numpy(), x)
    # a hook on the root may replace its gradient: the seed is copied first
    xt.grad = None
    s = xt[1:3]
    s.register_hook(lambda g: g * 2.0)
    s.backward(wt)
    np.testing.assert_array_equal(xt.grad.numpy()[1:3], 2 * w)
    np.testing.assert_array_equal(wt.numpy(), w)
    # the seed is the root itself, and a failed backward leaves the seed usable
    xt.grad = None
    r = xt * 3.0
    r.backward(r)
    np.testing.assert_array_equal(xt.grad.numpy(), (3 * (3 * x)).astype(dtype))
    with pytest.raises(RuntimeError, match="second time"):
        r.backward(r)
    np.testing.assert_array_equal(r.numpy(), (3 * x).astype(dtype))
    # a seed of the other dtype is converted (copied)
    xt.grad = None
    other = np.float32 if dtype == np.float64 else np.float64
    xt[1:3].backward(ad.tensor(w.astype(other)))
    np.testing.assert_allclose(xt.grad.numpy()[1:3], w, rtol=1e-6)


SLICES = [(slice(None, None, 2),), (slice(1, -1), slice(1, -1)), (slice(None, None, -2), slice(3, 0, -1)),
          (Ellipsis, slice(None, None, 3)), (1, slice(None, None, -1)), (slice(2, 2),), (None, slice(0, 1), 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", SLICES, ids=repr)
def test_slice_value_and_gradient_equal_numpy_bit_for_bit(dtype, index):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 6)).astype(dtype)
    xt = ad.tensor(x, requires_grad=True)
    y = xt[index]
    np.testing.assert_array_equal(y.numpy(), x[index])
    w = rng.normal(size=x[index].shape).astype(dtype)
    w.flat[:1] = -0.0                       # NumPy's d[index] = w keeps the sign of a zero
    y.backward(ad.tensor(w))
    want = np.zeros_like(x)
    want[index] = w
    assert xt.grad.numpy().tobytes() == want.tobytes()


def test_slice_that_reaches_an_element_twice_adds_its_cotangents():
    # the C API takes any strides in bounds; a stride of 0 reaches each element of x 3 times
    from pyautodiff._capi import ffi, lib, _call
    x = ad.tensor(np.arange(4.0), requires_grad=True)
    v = _call(lib.ad_slice, x._h, 2, ffi.new("int64_t[]", [3, 4]), 0, ffi.new("int64_t[]", [0, 1]))
    np.testing.assert_array_equal(v.numpy(), np.tile(np.arange(4.0), (3, 1)))
    w = np.arange(12.0).reshape(3, 4)
    v.backward(ad.tensor(w))
    np.testing.assert_array_equal(x.grad.numpy(), w.sum(axis=0))
    # overlapping windows (strides 1, 1), as sliding_window_view
    x.grad = None
    v = _call(lib.ad_slice, x._h, 2, ffi.new("int64_t[]", [2, 3]), 0, ffi.new("int64_t[]", [1, 1]))
    v.backward(ad.tensor(np.ones((2, 3))))
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0, 2.0, 1.0])
