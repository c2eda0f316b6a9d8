"""Exactness of the large-tensor paths of concatenate / stack and of the slice VJP.

concatenate and stack copy with streaming stores once the op writes AD_STREAM_BYTES (4 MiB) or more
(csrc/core.h), and the slice VJP zeroes the gradient slab by slab just before storing the
cotangent into it (place_in_zeros, csrc/kernels/index.c). The sizes here reach both: several
slabs, runs that start and end inside a cache line, negative strides, a prefix and a suffix of the
gradient outside the view. Each result must equal NumPy's bit for bit."""
import numpy as np
import pytest

import pyautodiff as ad

DTYPES = [np.float64, np.float32]


def _check_concat(op, arrays, axis, dtype):
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=s).astype(dtype) for s in arrays]
    ts = [ad.tensor(x, requires_grad=True) for x in xs]
    y = getattr(ad, op)(ts, axis)
    want = getattr(np, op)(xs, axis)
    assert want.nbytes >= 4 << 20              # the streaming path
    assert y.numpy().tobytes() == want.tobytes()
    w = rng.normal(size=want.shape).astype(dtype)
    y.backward(ad.tensor(w))
    if op == "stack":
        parts = [np.take(w, i, axis=axis) for i in range(len(xs))]
    else:
        cuts = np.cumsum([x.shape[axis] for x in xs])[:-1]
        parts = np.split(w, cuts, axis=axis)
    for t, p in zip(ts, parts):
        assert t.grad.numpy().tobytes() == np.ascontiguousarray(p).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes, axis", [
    ([(257, 1031), (100, 1031), (700, 1031)], 0),
    ([(701, 513), (701, 3), (701, 1001)], 1),      # rows of 3 elements: runs shorter than a line
    ([(701, 513), (701, 3), (701, 1001)], -1),
], ids=["axis0", "axis1", "axis-1"])
def test_large_concatenate_values_and_gradients_equal_numpy_bit_for_bit(dtype, shapes, axis):
    _check_concat("concatenate", shapes, axis, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_large_stack_values_and_gradients_equal_numpy_bit_for_bit(dtype, axis):
    _check_concat("stack", [(523, 509)] * 5, axis, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_concatenate_of_one_input_twice_adds_its_blocks(dtype):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(600, 1000)).astype(dtype)
    xt = ad.tensor(x, requires_grad=True)
    y = ad.concatenate([xt, xt * 2.0], 0)
    w = rng.normal(size=(1200, 1000)).astype(dtype)
    y.backward(ad.tensor(w))
    np.testing.assert_array_equal(xt.grad.numpy(), w[:600] + (w[600:] * dtype(2.0)))


BIG_SLICES = [
    (slice(None, None, 2),), (slice(None), slice(None, None, 2)), (slice(3, -5), slice(1, -1)),
    (slice(None, None, -2), slice(60, 0, -3)), (Ellipsis, slice(None, None, 3)), (7,), (slice(None), 5),
    (slice(None, None, -1),), (slice(100, 200),), (None, slice(10, 290, 7), slice(None, None, -1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", BIG_SLICES, ids=repr)
def test_slice_gradient_over_many_slabs_equals_numpy_bit_for_bit(dtype, index):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(300, 70)).astype(dtype)    # slabs of 32 KB: several per gradient
    xt = ad.tensor(x, requires_grad=True)
    y = xt[index]
    assert y.numpy().tobytes() == np.ascontiguousarray(x[index]).tobytes()
    w = rng.normal(size=x[index].shape).astype(dtype)
    w.flat[:1] = -0.0
    y.backward(ad.tensor(w))
    want = np.zeros_like(x)
    want[index] = w
    assert xt.grad.numpy().tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", [(slice(None), slice(2, None, 3), slice(None, None, -2)),
                                   (slice(None, None, -3), 4), (slice(5, 6), slice(None), slice(0, 1))],
                         ids=repr)
def test_slice_gradient_of_a_3d_view_equals_numpy(dtype, index):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(40, 30, 50)).astype(dtype)
    xt = ad.tensor(x, requires_grad=True)
    w = rng.normal(size=x[index].shape).astype(dtype)
    xt[index].backward(ad.tensor(w))
    want = np.zeros_like(x)
    want[index] = w
    assert xt.grad.numpy().tobytes() == want.tobytes()


@pytest.mark.parametrize("strides, offset", [([1, 300], 0), ([-1, 300], 299), ([1, -300], 300 * 69)])
def test_slice_gradient_of_a_view_whose_outer_axis_is_not_first(strides, offset):
    # the C API takes any one-to-one strides: a transposed view has its widest stride last
    from pyautodiff._capi import ffi, lib, _call
    rng = np.random.default_rng(11)
    x = rng.normal(size=300 * 70)
    xt = ad.tensor(x, requires_grad=True)
    v = _call(lib.ad_slice, xt._h, 2, ffi.new("int64_t[]", [300, 70]), offset, ffi.new("int64_t[]", strides))
    pos = offset + np.arange(300)[:, None] * strides[0] + np.arange(70)[None, :] * strides[1]
    np.testing.assert_array_equal(v.numpy(), x[pos])
    w = rng.normal(size=(300, 70))
    v.backward(ad.tensor(w))
    want = np.zeros_like(x)
    want[pos] = w
    assert xt.grad.numpy().tobytes() == want.tobytes()
