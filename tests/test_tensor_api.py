"""The Python API of issue 2: construction and dtype rules, Tensor properties and conversions,
operators with Python scalars and NumPy arrays, comparisons, backward's arguments and errors,
retain_graph, no_grad, detach, requires_grad propagation, odd NumPy layouts and bad input."""
import gc

import numpy as np
import pytest

import pyautodiff as ad

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


# ---------------------------------------------------------------------------------------------
# construction and dtype rules
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data,dtype", [
    ([1.0, 2.0], F64), (np.array([1.0, 2.0], np.float32), F32), (np.array([1, 2]), F64),
    ([True, False], F64), (np.array([1, 2], np.uint8), F64), (3, F64), (2.5, F64),
    (np.float32(1.5), F32), (np.array([[1.0]], np.float16), F32), (np.array([1.0], ">f4"), F32),
    (np.array([1.0], ">f8"), F64),
])
def test_tensor_default_dtype(data, dtype):
    t = ad.tensor(data)
    assert t.dtype == dtype
    np.testing.assert_array_equal(t.numpy(), np.asarray(data, dtype=dtype))
    assert t.shape == np.shape(data)


@pytest.mark.parametrize("spec", [np.float32, "float32", np.dtype("float32"), ad.float32, "f4"])
def test_dtype_argument_forms(spec):
    t = ad.tensor([1, 2, 3], dtype=spec)
    assert t.dtype == F32 and t.numpy().dtype == F32
    assert ad.tensor(np.ones(2, np.float32), dtype=ad.float64).dtype == F64


@pytest.mark.parametrize("bad", [np.int32, "int64", np.complex128, "float16", object, "nope"])
def test_bad_dtype_is_type_error(bad):
    with pytest.raises(TypeError):
        ad.tensor([1.0], dtype=bad)


def test_tensor_copies_its_input():
    a = np.array([1.0, 2.0])
    t = ad.tensor(a)
    a[0] = 100.0
    assert t.numpy()[0] == 1.0
    u = ad.tensor(t)                    # from a Tensor: a new leaf with a copy
    assert u is not t and u.numpy().tolist() == [1.0, 2.0]


def test_float32_and_float64_constants_exist():
    assert ad.float32 == np.float32 and ad.float64 == np.float64


@pytest.mark.parametrize("fn,value", [(ad.zeros, 0.0), (ad.ones, 1.0)])
def test_zeros_ones(fn, value):
    t = fn((2, 3))
    assert t.shape == (2, 3) and t.dtype == F64
    np.testing.assert_array_equal(t.numpy(), np.full((2, 3), value))
    assert fn(4, dtype="float32").dtype == F32 and fn(4).shape == (4,)
    assert fn(()).shape == () and fn((0, 2)).shape == (0, 2)


def test_full_and_likes():
    t = ad.full((2, 2), 7.5)
    np.testing.assert_array_equal(t.numpy(), np.full((2, 2), 7.5))
    assert ad.full(3, -1, dtype=np.float32).dtype == F32
    src = ad.tensor(np.ones((3, 1), np.float32))
    z, o = ad.zeros_like(src), ad.ones_like(src)
    assert z.shape == o.shape == (3, 1) and z.dtype == o.dtype == F32
    assert z.numpy().sum() == 0 and o.numpy().sum() == 3
    assert ad.zeros_like(np.ones((2, 5))).shape == (2, 5)
    assert ad.ones_like(src, dtype=ad.float64).dtype == F64
    r = ad.zeros((2,), requires_grad=True)
    assert r.requires_grad and r.is_leaf


# ---------------------------------------------------------------------------------------------
# properties and conversions
# ---------------------------------------------------------------------------------------------
def test_properties():
    t = ad.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and t.dtype == F64
    assert isinstance(t.dtype, np.dtype)
    assert t.requires_grad and t.is_leaf and t.grad is None
    y = t * 2.0
    assert y.requires_grad and not y.is_leaf
    assert len(t) == 2
    with pytest.raises(TypeError):
        len(ad.tensor(1.0))
    s = ad.tensor(3.0)
    assert s.shape == () and s.ndim == 0 and s.size == 1


def test_numpy_is_a_copy():
    t = ad.tensor([1.0, 2.0])
    a = t.numpy()
    a[0] = 99.0
    assert t.numpy()[0] == 1.0
    b = np.asarray(t)
    b[1] = -5.0
    assert t.numpy().tolist() == [1.0, 2.0]
    assert np.asarray(t, dtype=np.float32).dtype == F32


def test_item_tolist_float():
    assert ad.tensor(2.5).item() == 2.5 and isinstance(ad.tensor(2.5).item(), float)
    assert ad.tensor([[4.0]]).item() == 4.0                 # one element counts as scalar
    assert ad.tensor(np.float32(0.1)).item() == float(np.float32(0.1))
    with pytest.raises(ValueError):
        ad.tensor([1.0, 2.0]).item()
    assert ad.tensor([[1, 2], [3, 4]]).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert ad.tensor(5.0).tolist() == 5.0
    assert float(ad.tensor(1.5)) == 1.5


def test_repr_shows_values_and_grad_status():
    t = ad.tensor([1.0, 2.5])
    assert repr(t) == "tensor([1. , 2.5])"
    r = repr(ad.tensor([1.0], dtype="float32", requires_grad=True))
    assert "1." in r and "float32" in r and "requires_grad=True" in r
    y = ad.tensor([1.0], requires_grad=True) * 2.0
    assert "2." in repr(y) and "grad" in repr(y)


def test_hashable_by_identity_and_comparisons_are_elementwise():
    a, b = ad.tensor([1.0, 2.0]), ad.tensor([1.0, 2.0])
    assert hash(a) != hash(b) or a is b
    d = {a: "a", b: "b"}
    assert d[a] == "a" and d[b] == "b" and len({a, b}) == 2
    eq = a == b
    assert isinstance(eq, np.ndarray) and eq.dtype == bool and eq.tolist() == [True, True]
    x = ad.tensor([1.0, 2.0, 3.0])
    assert (x < 2).tolist() == [True, False, False]
    assert (x <= 2).tolist() == [True, True, False]
    assert (x > np.array([0.0, 5.0, 1.0])).tolist() == [True, False, True]
    assert (x >= 3.0).tolist() == [False, False, True]
    assert (x != 2.0).tolist() == [True, False, True]
    assert (x == ad.tensor([1.0, 0.0, 3.0])).tolist() == [True, False, True]
    # no gradient: comparisons give plain arrays even for tensors that require grad
    assert isinstance(ad.tensor([1.0], requires_grad=True) > 0, np.ndarray)


def test_T_reverses_all_axes():
    a = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(ad.tensor(a).T.numpy(), a.T)
    assert ad.tensor(np.ones(3)).T.shape == (3,)


# ---------------------------------------------------------------------------------------------
# operators with Python scalars and NumPy arrays on either side
# ---------------------------------------------------------------------------------------------
A = np.array([[1.0, 2.0], [3.0, 4.0]])
B = np.array([[0.5, -1.0], [2.0, 0.25]])

OPERATORS = [
    ("add", lambda x, y: x + y), ("sub", lambda x, y: x - y), ("mul", lambda x, y: x * y),
    ("div", lambda x, y: x / y), ("pow", lambda x, y: x ** y), ("matmul", lambda x, y: x @ y),
]


@pytest.mark.parametrize("name,op", OPERATORS)
def test_operators_with_ndarray_on_either_side(name, op):
    expected = op(A, np.abs(B) if name == "pow" else B)
    other = np.abs(B) if name == "pow" else B
    left = op(ad.tensor(A), other)           # Tensor op ndarray
    right = op(A, ad.tensor(other))          # ndarray op Tensor: NumPy defers to the Tensor
    both = op(ad.tensor(A), ad.tensor(other))
    for r in (left, right, both):
        assert isinstance(r, ad.Tensor)
        np.testing.assert_allclose(r.numpy(), expected, rtol=1e-15)


@pytest.mark.parametrize("name,op", OPERATORS[:5])
@pytest.mark.parametrize("scalar", [2, 0.5, True])
def test_operators_with_python_scalars(name, op, scalar):
    for dtype in (np.float32, np.float64):
        t = ad.tensor(A.astype(dtype))
        for r, e in ((op(t, scalar), op(A.astype(dtype), scalar)), (op(scalar, t), op(scalar, A.astype(dtype)))):
            assert isinstance(r, ad.Tensor)
            assert r.dtype == e.dtype == dtype       # Python scalars are weak: the dtype stays
            np.testing.assert_allclose(r.numpy(), e, rtol=1e-6 if dtype == np.float32 else 1e-15)


def test_unary_operators_and_numpy_scalars():
    t = ad.tensor([-1.0, 2.0])
    assert (-t).tolist() == [1.0, -2.0]
    assert (+t).tolist() == [-1.0, 2.0]
    assert abs(t).tolist() == [1.0, 2.0]
    # NumPy scalars are strongly typed (NEP 50): float32 tensor with np.float64 promotes
    t32 = ad.tensor([1.0], dtype="float32")
    assert (t32 + np.float64(1.0)).dtype == F64
    assert (np.float32(2.0) * t32).dtype == F32
    assert (t32 + [1.0]).dtype == F64                  # a list is float64 data


def test_functions_accept_arrays_and_lists():
    """Every public op takes NumPy arrays and lists too (they become constant leaves)."""
    np.testing.assert_allclose(ad.exp(np.zeros(2)).numpy(), [1.0, 1.0])
    np.testing.assert_allclose(ad.add([1.0, 2.0], np.ones(2)).numpy(), [2.0, 3.0])
    np.testing.assert_allclose(ad.sum([[1.0, 2.0], [3.0, 4.0]], axis=0).numpy(), [4.0, 6.0])
    np.testing.assert_allclose(ad.matmul(np.ones((2, 3)), [1.0, 2.0, 3.0]).numpy(), [6.0, 6.0])
    assert ad.reshape(np.arange(6.0), (2, 3)).shape == (2, 3)
    assert ad.transpose(np.ones((2, 3))).shape == (3, 2)
    assert ad.broadcast_to(1.0, (2, 2)).shape == (2, 2)
    assert ad.astype([1, 2], "float32").dtype == F32
    assert ad.maximum(ad.tensor([1.0, -1.0], dtype="float32"), 0.0).dtype == F32
    assert ad.minimum(0.0, [1.0, -1.0]).tolist() == [0.0, -1.0]


def test_unsupported_operand_types_are_type_errors():
    t = ad.tensor([1.0])
    for bad in ("a", None, object(), {1: 2}, 1 + 2j):
        with pytest.raises(TypeError):
            t + bad
        with pytest.raises(TypeError):
            bad * t
    with pytest.raises(TypeError):
        t @ "x"
    with pytest.raises(TypeError):
        ad.exp("x")
    with pytest.raises(TypeError):
        ad.add(t, [1 + 2j])


# ---------------------------------------------------------------------------------------------
# backward's arguments
# ---------------------------------------------------------------------------------------------
def test_backward_with_grad_and_shape_mismatch():
    x = ad.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 2.0
    with pytest.raises(ValueError) as e:
        y.backward(grad=np.ones(4))
    assert "(4,)" in str(e.value) and "(3,)" in str(e.value)
    with pytest.raises(ValueError) as e:
        y.backward(grad=np.ones((3, 1)))
    assert "(3, 1)" in str(e.value) and "(3,)" in str(e.value)
    y.backward(grad=[1.0, 0.5, 0.0])              # a failed call leaves the graph usable
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 1.0, 0.0])


@pytest.mark.parametrize("leaf_dtype", [np.float32, np.float64])
def test_backward_grad_of_the_other_float_dtype_is_cast(leaf_dtype):
    other = np.float64 if leaf_dtype == np.float32 else np.float32
    x = ad.tensor(np.array([1.0, 2.0], leaf_dtype), requires_grad=True)
    (x * 3.0).backward(grad=np.array([1.0, 0.5], other))
    assert x.grad.dtype == leaf_dtype
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 1.5])
    x.zero_grad()
    (x * 3.0).backward(grad=ad.tensor(np.array([2.0, 2.0], other)))
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])
    x.zero_grad()
    (x * 3.0).backward(grad=[1, 2])                # integer data: cast to the tensor's dtype
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 6.0])


def test_backward_complex_or_non_numeric_grad_is_type_error():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    for bad in (np.array([1 + 1j, 2]), ["a", "b"], np.array([None, None])):
        with pytest.raises(TypeError):
            y.backward(grad=bad)
    assert x.grad is None


def test_backward_without_grad_needs_one_element():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError):
        (x * 2.0).backward()
    (x * 2.0).sum().reshape(1, 1).backward()      # one element counts as a scalar
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_backward_on_tensor_not_requiring_grad():
    with pytest.raises(RuntimeError):
        ad.tensor(1.0).backward()
    x = ad.tensor(2.0, requires_grad=True)
    with ad.no_grad():
        y = x * 2.0
    with pytest.raises(RuntimeError):
        y.backward()


def test_backward_on_a_leaf_seeds_its_own_grad():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    x.backward(grad=[3.0, 4.0])
    x.backward(grad=[1.0, 1.0])
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 5.0])


def test_second_backward_needs_retain_graph():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])     # the failed call added nothing
    z = (x * x).sum()
    z.backward(retain_graph=True)
    z.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0 + 4.0, 4.0 + 8.0])


def test_shared_subgraph_released_by_one_backward():
    x = ad.tensor([1.0], requires_grad=True)
    h = ad.exp(x)
    a, b = (h * 2.0).sum(), (h * 3.0).sum()
    a.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        b.backward()


def test_values_readable_after_backward():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3.0
    loss = (h * h).sum()
    loss.backward()
    assert loss.item() == 45.0
    assert h.numpy().tolist() == [3.0, 6.0]
    assert x.numpy().tolist() == [1.0, 2.0]
    np.testing.assert_array_equal(x.grad.numpy(), [18.0, 36.0])


def test_grad_setter():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    x.grad = np.array([5.0, 5.0])
    assert x.grad.dtype == F64 and x.grad.tolist() == [5.0, 5.0]
    (x * 1.0).sum().backward()
    assert x.grad.tolist() == [6.0, 6.0]
    with pytest.raises(ValueError):
        x.grad = np.ones(3)
    x.grad = np.ones(2, np.float32)                 # array data is cast to the leaf's dtype ...
    assert x.grad.dtype == F64
    with pytest.raises(ValueError, match="float32"):
        x.grad = ad.tensor(np.ones(2, np.float32))   # ... a Tensor of another dtype is refused
    x.grad = [6.0, 6.0]
    with pytest.raises(RuntimeError):
        x.grad = x                                   # a tensor cannot be its own grad
    assert x.grad.tolist() == [6.0, 6.0]


# ---------------------------------------------------------------------------------------------
# no_grad, detach, requires_grad propagation
# ---------------------------------------------------------------------------------------------
def test_no_grad_records_nothing_and_nests():
    x = ad.tensor([1.0], requires_grad=True)
    assert ad.is_grad_enabled()
    before = ad.tape_stats()["live_nodes"]
    with ad.no_grad():
        assert not ad.is_grad_enabled()
        y = ad.exp(x) * 2.0
        with ad.no_grad():
            z = y + x
        assert not ad.is_grad_enabled()            # the inner exit restores "off", not "on"
    assert ad.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf and not z.requires_grad
    # only y and z themselves are alive: no graph nodes behind them
    assert ad.tape_stats()["live_nodes"] == before + 2
    np.testing.assert_allclose(y.numpy(), [2 * np.e])


def test_no_grad_restored_on_exception_and_as_decorator():
    with pytest.raises(KeyError):
        with ad.no_grad():
            raise KeyError("boom")
    assert ad.is_grad_enabled()

    @ad.no_grad()
    def f(t):
        assert not ad.is_grad_enabled()
        return t * 2.0

    x = ad.tensor([1.0], requires_grad=True)
    assert not f(x).requires_grad
    assert ad.is_grad_enabled()

    @ad.no_grad()
    def g():
        raise ValueError("inner")

    with pytest.raises(ValueError):
        g()
    assert ad.is_grad_enabled()


def test_detach():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and d.numpy().tolist() == [3.0, 6.0]
    (d * x).sum().backward()                  # no gradient flows through d
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 6.0])
    a = d.numpy()
    a[0] = 100.0
    assert d.numpy()[0] == 3.0 and y.numpy()[0] == 3.0


def test_requires_grad_propagation():
    a = ad.tensor([1.0], requires_grad=True)
    c = ad.tensor([2.0])
    assert (a * c).requires_grad and not (c * c).requires_grad
    assert not (c * 2.0).requires_grad and (c + a).requires_grad
    assert not c.requires_grad and c.is_leaf
    c.requires_grad = True
    assert c.requires_grad
    y = a * 2.0
    with pytest.raises(RuntimeError):
        y.requires_grad = False                   # only leaves
    (a * c).sum().backward()
    assert a.grad.tolist() == [2.0] and c.grad.tolist() == [1.0]


def test_constant_inputs_get_no_grad():
    a = ad.tensor([1.0, 2.0], requires_grad=True)
    c = ad.tensor([3.0, 4.0])
    (a * c).sum().backward()
    assert c.grad is None
    assert a.grad.tolist() == [3.0, 4.0]


# ---------------------------------------------------------------------------------------------
# NumPy layouts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda a: a[:, ::2],                  # non-contiguous
    lambda a: a[::-1],                    # negatively strided
    lambda a: a[::-1, ::-3],
    lambda a: a.T,                        # Fortran order
    lambda a: np.asfortranarray(a),
    lambda a: a.astype(">f8"),            # big-endian
    lambda a: np.broadcast_to(a[:1], a.shape),   # zero strides
])
def test_non_contiguous_and_negatively_strided_inputs(make):
    base = np.arange(24.0).reshape(4, 6)
    view = make(base)
    t = ad.tensor(view, requires_grad=True)
    np.testing.assert_array_equal(t.numpy(), view)
    w = make(np.linspace(-1, 1, 24).reshape(4, 6))
    y = ad.sum(t * w + ad.tensor(view) ** 2.0)
    assert y.item() == pytest.approx(float(np.sum(view * w + view ** 2)), rel=1e-14)
    y.backward()
    np.testing.assert_array_equal(t.grad.numpy(), np.asarray(w, np.float64))
    # ndarray @ Tensor with a strided ndarray on the left
    m = (view @ ad.tensor(np.ones((view.shape[1], 2)))).numpy()
    np.testing.assert_allclose(m, view @ np.ones((view.shape[1], 2)), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# bad input: clear exceptions naming the op and shapes
# ---------------------------------------------------------------------------------------------
def test_incompatible_broadcast_is_value_error():
    with pytest.raises(ValueError, match=r"add.*\(3,\).*\(4,\)"):
        ad.tensor(np.ones(3)) + ad.tensor(np.ones(4))
    with pytest.raises(ValueError, match="maximum"):
        ad.maximum(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="broadcast_to"):
        ad.broadcast_to(ad.ones((3,)), (2, 4))
    with pytest.raises(ValueError):
        ad.broadcast_to(ad.ones((2, 3)), (3,))


def test_matmul_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        ad.ones((2, 3)) @ ad.ones((4, 5))
    with pytest.raises(ValueError):
        ad.matmul(ad.ones(3), ad.ones(4))
    with pytest.raises(ValueError):
        ad.matmul(ad.ones((2, 3, 4)), ad.ones((3, 4, 5)))      # batch axes 2 vs 3
    with pytest.raises(ValueError, match="matmul"):
        ad.tensor(2.0) @ ad.ones(3)
    with pytest.raises(ValueError):
        ad.matmul(ad.ones((3,)), ad.tensor(1.0))


def test_bad_axis_errors():
    x = ad.ones((2, 3))
    for axis in (2, -3, (0, 2), (0, 0), (1, -1)):
        with pytest.raises(ValueError, match="axis"):
            ad.sum(x, axis=axis)
    with pytest.raises(ValueError):
        ad.max(ad.tensor(1.0), axis=0)
    with pytest.raises(ValueError):
        ad.max(ad.zeros((0, 3)), axis=0)               # max of nothing has no identity
    with pytest.raises(TypeError):
        ad.mean(x, axis=1.5)
    with pytest.raises(TypeError):
        ad.mean(x, axis=(0.0,))
    with pytest.raises(ValueError):
        ad.transpose(ad.ones((2, 3, 4)), (0, 1))
    with pytest.raises(ValueError):
        ad.transpose(ad.ones((2, 3, 4)), (0, 1, 1))
    with pytest.raises(ValueError):
        ad.transpose(ad.ones((2, 3)), (0, 2))


def test_bad_reshape_errors():
    x = ad.ones((2, 3))
    for shape in ((4,), (-1, 4), (-1, -1), (2, -2), (7,)):
        with pytest.raises(ValueError, match="reshape"):
            ad.reshape(x, shape)
    with pytest.raises(TypeError):
        ad.reshape(x, (2.0, 3))
    with pytest.raises(ValueError):
        ad.ones(tuple([1] * 9))


@pytest.mark.parametrize("data,exc", [
    (np.array([1 + 2j]), TypeError), ([1j], TypeError), (np.array([object()]), TypeError),
    (["a", "b"], TypeError), ("abc", TypeError), (np.array([b"x"]), TypeError), (None, TypeError),
    ({"a": 1}, TypeError),
    ([[1.0, 2.0], [3.0]], ValueError), ([1.0, [2.0, 3.0]], ValueError),
])
def test_bad_data(data, exc):
    with pytest.raises(exc):
        ad.tensor(data)


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_copies_are_independent_tensors(how):
    """Regression: copying the handle slot made two objects share one reference, and dropping
    the copy released the original's node."""
    import copy
    import pickle
    x = ad.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y = {"copy": copy.copy, "deepcopy": copy.deepcopy,
         "pickle": lambda t: pickle.loads(pickle.dumps(t))}[how](x)
    assert y is not x and y._h != x._h
    assert y.dtype == F32 and y.requires_grad and y.is_leaf and y.numpy().tolist() == [1.0, 2.0]
    del y
    gc.collect()
    (x * 2.0).sum().backward()                  # the original is intact
    assert x.numpy().tolist() == [1.0, 2.0] and x.grad.tolist() == [2.0, 2.0]


def test_using_a_released_handle_is_a_clear_error():
    x = ad.tensor([1.0])
    h = x._h
    del x
    gc.collect()
    from pyautodiff._capi import lib, check
    with pytest.raises(RuntimeError, match="released"):
        check(lib.ad_retain(h))
