"""In-place updates and version counters, against PyTorch's documented behaviour: an update under
no_grad() writes the tensor's buffer and bumps its version; a sweep that would read a value saved
at an older version is a RuntimeError naming the op and both versions (and changes nothing); a
recorded update (grad mode on) is differentiable; a leaf that requires grad refuses updates while
grad mode is on."""
import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff import optim

STALE = r"modified by an in-place operation: input \d of the (\w+) node .* is at version (\d+), but the \w+ node saved it at version (\d+)"

# each in-place op, run under no_grad on a leaf of shape (3,)
UPDATES = {
    "add_": lambda t: t.add_(1.0),
    "sub_": lambda t: t.sub_(np.ones(3), alpha=2),
    "mul_": lambda t: t.mul_(2.0),
    "div_": lambda t: t.div_(2.0),
    "zero_": lambda t: t.zero_(),
    "fill_": lambda t: t.fill_(4.0),
    "copy_": lambda t: t.copy_(np.arange(3.0)),
    "clamp_": lambda t: t.clamp_(0.0, 1.5),
    "+=": lambda t: t.__iadd__(1.0),
    "-=": lambda t: t.__isub__(1.0),
    "*=": lambda t: t.__imul__(3.0),
    "/=": lambda t: t.__itruediv__(3.0),
    "setitem": lambda t: t.__setitem__(0, 9.0),
    "data": lambda t: t.data.add_(1.0),
}


@pytest.mark.parametrize("name", list(UPDATES))
def test_update_of_a_saved_value_makes_backward_raise(name):
    w = ad.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x = ad.tensor([4.0, 5.0, 6.0])
    y = (w * x).sum()                     # multiply saves x (for w's gradient)
    with ad.no_grad():
        UPDATES[name](x)
    assert x._version == 1
    with pytest.raises(RuntimeError, match=STALE) as e:
        y.backward()
    assert "multiply" in str(e.value) and "version 1" in str(e.value) and "version 0" in str(e.value)
    assert w.grad is None                 # nothing changed
    # a saved value of the parameter itself, modified by the optimizer's kind of update
    z = (w * w).sum()
    with ad.no_grad():
        UPDATES[name](w)
    with pytest.raises(RuntimeError, match=STALE):
        z.backward()
    assert w.grad is None


def test_optimizer_step_and_load_state_dict_bump_versions():
    # the example: a second backward silently used the updated w (1.6 instead of 2.0)
    w = ad.tensor([1.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.1)
    y = (w * w).sum()
    y.backward(retain_graph=True)
    np.testing.assert_array_equal(w.grad.numpy(), [2.0])
    opt.step()
    assert w._version == 1 and w.item() == 0.8
    with pytest.raises(RuntimeError, match=r"multiply node .* version 1, .* version 0"):
        y.backward()
    np.testing.assert_array_equal(w.grad.numpy(), [2.0])   # unchanged by the failed sweep
    m = ad.nn.Linear(2, 1)
    out = (m(np.ones((1, 2))) ** 2).sum()
    m.load_state_dict({k: v + 1 for k, v in m.state_dict().items()})
    with pytest.raises(RuntimeError, match="version"):
        out.backward()


def test_every_sweep_checks_versions():
    w = ad.tensor([1.0, 2.0], requires_grad=True)
    x = ad.tensor([3.0, 4.0], requires_grad=True)
    y = ad.sin(w * x).sum()
    with ad.no_grad():
        x.mul_(2.0)
    with pytest.raises(RuntimeError, match="^backward: .*multiply"):
        y.backward(create_graph=True)
    with pytest.raises(RuntimeError, match="^vjp: .*multiply"):
        ad.autograd.grad(y, w)
    with pytest.raises(RuntimeError, match="^vjp_graph: .*multiply"):
        ad.autograd.grad(y, w, create_graph=True)
    from pyautodiff._capi import ffi, lib
    t, cot = ad.ones((1, 2)), ad.ones((1,))
    out = ffi.new("int64_t[1]")
    for name, call in (("jvp", lambda: lib.ad_jvp(y._h, 1, ffi.new("int64_t[]", [w._h]), ffi.new("int64_t[]", [t._h]), 1, out)),
                       ("vjp", lambda: lib.ad_vjp(y._h, cot._h, 1, ffi.new("int64_t[]", [w._h]), out)),
                       ("hvp", lambda: lib.ad_hvp(y._h, 1, ffi.new("int64_t[]", [w._h]), ffi.new("int64_t[]", [t._h]), 1, out))):
        assert call() != 0
        assert ffi.string(lib.ad_last_error()).decode().startswith(f"{name}: a value needed for gradient")
    # a transform records the function afresh, so it reads current values: no error
    np.testing.assert_allclose(ad.grad(lambda v: ad.sin(v * x).sum())(w.numpy()).numpy(),
                               np.cos(w.numpy() * x.numpy()) * x.numpy())


def test_rules_that_read_no_value_are_not_stale():
    # add reads neither input (its VJP passes the cotangent): PyTorch saves nothing for it either
    w = ad.tensor([1.0, 2.0], requires_grad=True)
    x = ad.tensor([3.0, 4.0])
    y = (w + x).sum()
    with ad.no_grad():
        x.add_(1.0)
    y.backward()
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 1.0])


def test_an_output_read_by_its_own_rule_is_checked():
    # exp's VJP reads its output: overwriting it under no_grad makes the exp node stale
    w = ad.tensor([0.5, 1.0], requires_grad=True)
    y = ad.exp(w)
    with ad.no_grad():
        y.mul_(2.0)
    assert not y.is_leaf and y._version == 1
    with pytest.raises(RuntimeError, match=r"the output of the exp node .* version 1, but the exp node saved it at version 0"):
        y.sum().backward()


def test_leaf_that_requires_grad_refuses_updates_with_grad_on():
    w = ad.tensor([1.0, 2.0], requires_grad=True)
    for update in UPDATES.values():
        if update is UPDATES["data"]:
            continue
        with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
            update(w)
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    w.data.add_(1.0)                       # .data is not tracked: allowed, as PyTorch's
    np.testing.assert_array_equal(w.numpy(), [2.0, 3.0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_manual_sgd_loop_equals_the_optimizer(dtype):
    rng = np.random.default_rng(0)
    X, target = rng.standard_normal((8, 3)), rng.standard_normal(8)
    w_manual = ad.tensor(np.ones(3), dtype=dtype, requires_grad=True)
    w_opt = ad.tensor(np.ones(3), dtype=dtype, requires_grad=True)
    opt = optim.SGD([w_opt], lr=0.05)
    for _ in range(20):
        for w in (w_manual, w_opt):
            (((X @ w) - target) ** 2).mean().backward()
        with ad.no_grad():
            w_manual -= 0.05 * w_manual.grad
        opt.step()
        w_manual.grad = None
        opt.zero_grad()
    assert w_manual.is_leaf and w_manual.requires_grad and w_manual.dtype == dtype
    if dtype == np.float64:   # same operations in the same order: the same bits
        np.testing.assert_array_equal(w_manual.numpy(), w_opt.numpy())
    else:                     # the optimizer computes in double and rounds once, the loop rounds twice
        np.testing.assert_allclose(w_manual.numpy(), w_opt.numpy(), rtol=1e-6)


def test_recorded_updates_on_non_leaves_are_differentiable():
    x = ad.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 2
    before = y
    y += x                 # y = 3x
    y.mul_(x)              # y = 3x^2
    y[1] = 0.0             # y1 does not depend on x any more
    assert y is before and not y.is_leaf
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 0.0, 18.0])


def test_setitem_is_differentiable_in_the_tensor_and_the_value():
    x = ad.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    v = ad.tensor([10.0, 20.0], requires_grad=True)
    y = x * 1.0
    y[[1, 3]] = v * v
    np.testing.assert_array_equal(y.numpy(), [1.0, 100.0, 3.0, 400.0])
    (y * ad.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 0.0, 3.0, 0.0])
    np.testing.assert_array_equal(v.grad.numpy(), [2 * 10 * 2.0, 2 * 20 * 4.0])

    def f(a, b):
        t = a * ad.ones(4)          # a Tensor even when a is an array
        t[1:3] = b ** 2             # b broadcasts over the slice
        t[np.array([0, 0])] = b     # repeated positions: the last one wins (NumPy)
        return (t ** 3).sum()
    ad.gradcheck(f, (np.array([0.3, -0.7, 1.1, 0.4]), np.array(0.9)))
    # second order through the update
    h = ad.hessian(lambda b: f(np.array([0.3, -0.7, 1.1, 0.4]), b))(np.array(0.9)).numpy()
    np.testing.assert_allclose(h, 6 * 0.9 + 2 * 30 * 0.9 ** 4, rtol=1e-12)   # d2/db2 (b^3 + 2 b^6)


def test_setitem_on_a_constant_with_a_value_that_requires_grad_records():
    v = ad.tensor(2.0, requires_grad=True)
    t = ad.zeros((2, 2))
    t[0, 1] = v                       # PyTorch: t becomes part of the graph (CopySlices)
    assert t.requires_grad and not t.is_leaf
    (t * 3).sum().backward()
    assert v.grad.item() == 3.0


def test_setitem_under_no_grad_writes_in_place_with_numpy_semantics():
    t = ad.zeros((2, 3), dtype=np.float32)
    t[0] = [1, 2, 3]
    t[:, 1] = 9
    t[t > 2] = -1.0
    ref = np.zeros((2, 3), np.float32)
    ref[0] = [1, 2, 3]
    ref[:, 1] = 9
    ref[ref > 2] = -1.0
    np.testing.assert_array_equal(t.numpy(), ref)
    assert t.dtype == np.float32 and t._version == 3
    with pytest.raises(IndexError):
        t[5] = 1.0
    with pytest.raises(ValueError, match="broadcast"):
        t[0] = [1.0, 2.0]
    with pytest.raises(TypeError, match="index"):
        t[ad.tensor([0.0])] = 1.0


def test_shape_and_dtype_of_in_place_results():
    t = ad.zeros(3, dtype=np.float32)
    t += np.ones(3, np.float64)               # the result keeps t's dtype, as PyTorch
    assert t.dtype == np.float32 and t.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"add_: .*shape \(2, 3\).*\(3,\)"):
        t.add_(np.ones((2, 3)))
    assert t._version == 1


def test_data_clone_detach_and_requires_grad():
    w = ad.tensor([1.0, 2.0], requires_grad=True)
    d = w.data
    assert d.is_leaf and not d.requires_grad
    d[0] = 5.0
    assert w.tolist() == [5.0, 2.0] and w._version == d._version == 1
    c = w.clone()
    assert c.requires_grad and not c.is_leaf
    (c * c).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [10.0, 4.0])
    with ad.no_grad():
        c.add_(1.0)
    assert w.tolist() == [5.0, 2.0]
    y = w * 3
    y.detach_()
    assert y.is_leaf and not y.requires_grad and y.tolist() == [15.0, 6.0]
    z = ad.tensor([1.0]).requires_grad_()
    assert z.requires_grad and z.requires_grad_(False) is z and not z.requires_grad
    with pytest.raises(RuntimeError, match="leaf"):
        (w * 2).requires_grad_(False)


def test_grad_zeroed_in_place_is_the_stored_grad():
    w = ad.tensor([1.0, 2.0], requires_grad=True)
    (w * w).sum().backward()
    w.grad.zero_()
    assert w.grad.tolist() == [0.0, 0.0]
    (w * w).sum().backward()
    assert w.grad.tolist() == [2.0, 4.0]


def test_in_place_memory_is_flat():
    w = ad.tensor(np.ones(100), requires_grad=True)
    live = []
    for _ in range(50):
        (w * w).sum().backward()
        with ad.no_grad():
            w -= 0.01 * w.grad
        w.grad = None
        live.append(ad.tape_stats()["live_nodes"])
    assert live[5] == live[-1]


def test_conveniences():
    t = ad.tensor(3.14159)
    assert f"{t:.2f}" == "3.14" and f"{ad.tensor([2.5]):>5}" == "  2.5"
    assert int(ad.tensor(2.7)) == 2 and bool(ad.tensor([1.0])) and not bool(ad.tensor(0.0))
    r = round(ad.tensor([2.5, 3.5, -0.5]))           # PyTorch: a tensor, half to even
    assert isinstance(r, ad.Tensor) and r.tolist() == [2.0, 4.0, -0.0]
    assert round(ad.tensor(1.2345), 2).item() == pytest.approx(1.23)
    m = ad.ones((2, 3))
    assert m.numel() == 6 and m.dim() == 2 and m.tolist() == [[1.0] * 3] * 2
    assert m.float().dtype == np.float32 and m.float().double().dtype == np.float64 and m.to("float64") is m
    with pytest.raises(TypeError, match="one element"):
        f"{m:.2f}"
    assert f"{m}" == str(m)
    with pytest.raises(ValueError):
        int(m)
