"""Basic indexing in one call (ad_index: the parts of t[...] as written, the view worked out in C)
and the cached shape, against NumPy's own indexing.

Every way into ad_index is exercised: exact ints, slices with int or None fields, None, Ellipsis,
np.integer parts and slice fields (normalised in Python), and the fallback to NumPy's indexing
(bools, objects with __index__, numbers past int64). Values must equal NumPy's exactly (a copy
moves no arithmetic), gradients equal NumPy's scatter-add of the cotangent through the same
positions, and every error has NumPy's exception type and message."""
import importlib

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import pyautodiff as ad
from pyautodiff._capi import ffi, lib
from pyautodiff.tensor import _wrap

tensor_mod = importlib.import_module("pyautodiff.tensor")   # ad.tensor is the function

DTYPES = [np.float64, np.float32]
BIG = 2 ** 63   # past int64: such an index takes NumPy's path


def _values(shape, dtype):
    return np.asarray(np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) * 0.75 - 3.0, dtype)


@pytest.fixture
def ad_index_calls(monkeypatch):
    """The calls __getitem__ makes to ad_index (the one-call path); none means NumPy's path ran."""
    calls = []

    def spy(*args):
        h = lib.ad_index(*args)   # OverflowError (a number past int64) before any call
        calls.append(args)
        return h
    monkeypatch.setattr(tensor_mod, "_index", spy)
    return calls


def _check_against_numpy(shape, index, dtype):
    """t[index] against a[index]: the same values, dtype and shape, or the same exception and
    message; and the gradient of sum(t[index] * g) equal to g scatter-added through the positions
    NumPy picks."""
    a = _values(shape, dtype)
    try:
        expected = a[index]
    except (IndexError, ValueError, TypeError, OverflowError) as e:
        with pytest.raises(type(e)) as info:
            ad.tensor(a)[index]
        assert str(info.value) == str(e)
        return None
    x = ad.tensor(a, requires_grad=True)
    y = x[index]
    assert y.shape == expected.shape and y.dtype == expected.dtype
    np.testing.assert_array_equal(y.numpy(), expected)
    g = np.random.default_rng(len(shape)).standard_normal(expected.shape).astype(dtype)
    (y * ad.tensor(g)).sum().backward()
    grid = np.arange(a.size).reshape(shape)[index]
    scattered = np.zeros(a.size, dtype)
    np.add.at(scattered, np.asarray(grid).reshape(-1), g.reshape(-1))
    np.testing.assert_array_equal(x.grad.numpy(), scattered.reshape(shape))
    return y


# ---- every encoding path, against NumPy ----

def _bounds():
    return st.one_of(st.none(), st.integers(-7, 7), st.sampled_from([-BIG + 1, BIG - 1, -10 ** 9, 10 ** 9]))


@st.composite
def _basic_index(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    ints = st.integers(-6, 6)
    slices = st.builds(slice, _bounds(), _bounds(),
                       st.one_of(st.none(), st.sampled_from([1, 2, 3, -1, -2, -3, 7, -7, BIG - 1, -BIG + 1])))
    part = st.one_of(ints, slices, st.none(), st.just(Ellipsis))
    parts = draw(st.lists(part, max_size=len(shape) + 2))
    assume(len(shape) + parts.count(None) <= 8)   # the library's limit (NumPy's is 64)
    if parts.count(Ellipsis) > 1 and draw(st.booleans()):
        parts = [p for p in parts if p is not Ellipsis]
    if len(parts) == 1 and draw(st.booleans()):
        return shape, parts[0]
    return shape, tuple(parts)


@settings(max_examples=400, deadline=None)
@given(_basic_index(), st.sampled_from(DTYPES))
def test_basic_indices_match_numpy(case, dtype):
    shape, index = case
    _check_against_numpy(shape, index, dtype)


def test_every_slice_of_short_axes_matches_numpy():
    # the slice arithmetic exhaustively, as CPython tests slice.indices: every bound from far
    # outside to far inside, either sign of step, axes of 0 to 4 elements (and a middle axis)
    bounds = [None, *range(-6, 7)]
    for n in range(5):
        a = _values((2, n, 2), np.float64)
        x = ad.tensor(a)
        for start in bounds:
            for stop in bounds:
                for step in (None, 1, 2, 3, -1, -2, -3):
                    index = (1, slice(start, stop, step))
                    np.testing.assert_array_equal(x[index].numpy(), a[index], err_msg=str(index))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, index", [
    ((5,), 3), ((5,), -5), ((4, 3), (2,)), ((4, 3), (-1, 2)), ((4, 3), ()),
    ((4, 3), slice(None)), ((4, 3), slice(1, -1)), ((6,), slice(None, None, -1)), ((6,), slice(4, None, -2)),
    ((6,), slice(None, 1, -2)), ((6,), slice(-100, 100)), ((6,), slice(100, -100, -1)), ((6,), slice(3, 3)),
    ((6,), slice(5, 1)), ((3, 4, 5), (Ellipsis, 1)), ((3, 4, 5), (1, Ellipsis)), ((3, 4, 5), (1, Ellipsis, 2)),
    ((3, 4, 5), (None, 1, None, slice(None, None, 2), None)), ((3, 4, 5), (Ellipsis, None)),
    ((3, 4, 5), (slice(None, None, -1), Ellipsis, slice(4, 0, -3))), ((), ()), ((), None), ((), Ellipsis),
    ((0, 3), (slice(None), 1)), ((2, 0), (1,)), ((2, 3), (slice(None, None, BIG - 1), 1)),
    ((2, 3), (slice(None, None, -BIG + 1), slice(BIG - 1, -BIG + 1, -1))), ((1,) * 8, (0,) * 8),
    ((2, 2), (None,) * 6),
])
def test_one_call_path_matches_numpy(shape, index, dtype, ad_index_calls):
    assert _check_against_numpy(shape, index, dtype) is not None
    assert len(ad_index_calls) == 1


class Index:
    """Not an int, but usable as one (operator.index)."""
    def __init__(self, i):
        self.i = i

    def __index__(self):
        return self.i


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, index", [
    ((5, 3), np.int64(4)), ((5, 3), (np.int32(-1), np.uint8(2))), ((5, 3), slice(np.int64(1), np.int16(4))),
    ((7,), slice(None, None, np.int8(-2))), ((7,), slice(Index(1), Index(6), Index(2))),
    ((7,), slice(True, None)),   # a bool bound is 1, as slice.indices reads it
    ((5, 3), Index(2)), ((5, 3), (1, Index(-1))),   # NumPy takes any __index__ but a bool's as an integer
])
def test_numpy_integers_and_index_objects_take_the_one_call_path(shape, index, dtype, ad_index_calls):
    assert _check_against_numpy(shape, index, dtype) is not None
    assert len(ad_index_calls) == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, index", [
    ((5, 3), True), ((5, 3), (np.True_, 1)), ((5, 3), (False, Ellipsis)), ((5, 3), [4, 0]),
    ((5, 3), np.array(2)), ((5, 3), (1, [True, False, True])), ((5, 3), (slice(None), np.array([2, 2]))),
    ((5, 3), (slice(BIG, None), 1)), ((5, 3), (slice(None, -BIG - 5, -1),)), ((5, 3), (slice(None, None, 2 ** 70),)),
])
def test_everything_else_takes_numpys_indexing(shape, index, dtype, ad_index_calls):
    assert _check_against_numpy(shape, index, dtype) is not None
    assert not ad_index_calls


def test_views_that_reach_past_int64_arithmetic_stay_exact():
    # a step as large as int64 goes: only the first element is reached, and nothing overflows
    a = _values((3, 2), np.float64)
    for index in [slice(None, None, BIG - 1), slice(-1, None, -BIG + 1), slice(-BIG + 1, BIG - 1, BIG - 1)]:
        np.testing.assert_array_equal(ad.tensor(a)[index].numpy(), a[index])


def test_iteration_takes_rows_in_one_call_each(ad_index_calls):
    a = _values((3, 2), np.float32)
    rows = [r.numpy() for r in ad.tensor(a)]
    np.testing.assert_array_equal(np.stack(rows), a)
    assert len(ad_index_calls) == 3


# ---- errors: NumPy's exception type and message ----

@pytest.mark.parametrize("shape, index", [
    ((3,), 3), ((3,), -4), ((3, 4), (0, 4)), ((3, 4), (Ellipsis, -5)), ((3, 4), (None, 1, None, 9)),
    ((0,), 0), ((3, 4), (0, 0, 0)), ((), 0), ((3, 4), (Ellipsis, 1, Ellipsis)), ((3,), slice(None, None, 0)),
    ((3, 4), (1, slice(2, None, 0))), ((3,), slice(1.5, None)), ((3,), slice(None, "a")), ((3,), 1.5),
    ((3,), BIG), ((3,), -BIG - 1), ((3, 4), (slice(None), BIG)),
])
def test_errors_are_numpys(shape, index):
    assert _check_against_numpy(shape, index, np.float64) is None


def test_library_limits_keep_their_errors():
    x = ad.tensor(np.zeros(3))
    with pytest.raises(ValueError, match="the result would have 9 dimensions; tensors have at most 8"):
        x[(None,) * 8]
    with pytest.raises(TypeError, match="cannot be used as an index"):
        x[ad.tensor([0.0])]


# ---- the C entry point does not trust its caller ----

def _parts(*rows):
    return ffi.new("int64_t[]", [v for row in rows for v in row] or [0])


def test_c_entry_checks_its_arguments():
    x = ad.tensor(_values((3, 4), np.float64))
    S, N, E, I = lib.AD_INDEX_SLICE, lib.AD_INDEX_NEWAXIS, lib.AD_INDEX_ELLIPSIS, lib.AD_INDEX_INT
    with pytest.raises(ValueError, match="getitem: -1 index parts"):
        _wrap(lib.ad_index(x._h, -1, _parts((I, 0, 0, 1))))
    with pytest.raises(ValueError, match="getitem: 2 index parts at NULL"):
        _wrap(lib.ad_index(x._h, 2, ffi.NULL))
    for kind in (-1, 16, 1 << 40, -(1 << 63), I | lib.AD_INDEX_NO_START, N | lib.AD_INDEX_NO_STOP, S | 2 | 4):
        with pytest.raises(ValueError, match=f"getitem: part 1 has unknown kind {kind}"):
            _wrap(lib.ad_index(x._h, 2, _parts((I, 0, 0, 1), (kind, 0, 0, 1))))
    with pytest.raises(ValueError, match="slice step cannot be zero"):
        _wrap(lib.ad_index(x._h, 1, _parts((S, 0, 3, 0))))
    with pytest.raises(IndexError, match="index -9223372036854775808 is out of bounds for axis 0 with size 3"):
        _wrap(lib.ad_index(x._h, 1, _parts((I, -(1 << 63), 0, 1))))
    with pytest.raises(RuntimeError, match="invalid tensor handle"):
        _wrap(lib.ad_index(12345, 0, ffi.NULL))
    # no parts (NULL is fine then) is the whole tensor; the extreme step and bounds clamp
    np.testing.assert_array_equal(_wrap(lib.ad_index(x._h, 0, ffi.NULL)).numpy(), x.numpy())
    lo, hi = -(1 << 63), (1 << 63) - 1
    got = _wrap(lib.ad_index(x._h, 2, _parts((S, hi, lo, lo), (S | lib.AD_INDEX_NO_START | lib.AD_INDEX_NO_STOP, 7, 7, -1))))
    np.testing.assert_array_equal(got.numpy(), x.numpy()[hi:lo:-hi, ::-1])
    got = _wrap(lib.ad_index(x._h, 3, _parts((N, 5, 5, 0), (E, lo, hi, 0), (S, lo, hi, hi))))
    np.testing.assert_array_equal(got.numpy(), x.numpy()[None, ..., ::hi])


# ---- the cached shape ----

@pytest.mark.parametrize("dtype", DTYPES)
def test_shape_ndim_size_dtype_describe_the_tensor(dtype):
    for shape in [(), (0,), (3,), (2, 0, 4), (1,) * 8]:
        a = _values(shape, dtype)
        for t in (ad.tensor(a), ad.tensor(a)[...], ad.tensor(a, requires_grad=True) * 2):
            for _ in range(2):   # the first read fills the cache, the second reads it
                assert (t.shape, t.ndim, t.size, t.dtype) == (a.shape, a.ndim, a.size, a.dtype)
                assert type(t.size) is int and type(t.ndim) is int


def test_a_second_init_forgets_the_old_shape():
    t = ad.Tensor([1.0, 2.0])
    assert t.shape == (2,) and t.dtype == np.float64
    t.__init__(np.zeros((3, 1), np.float32))
    assert (t.shape, t.ndim, t.size, t.dtype) == ((3, 1), 2, 3, np.float32)
    p = ad.nn.Parameter(np.zeros(4))
    assert p.shape == (4,)
    p.__init__(np.zeros((2, 2)))
    assert p.shape == (2, 2) and p.size == 4


def test_rebinding_updates_keep_the_cached_shape_right():
    x = ad.tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 1.0
    assert y.shape == (2, 3)
    y.mul_(2.0)            # recorded: y is rebound to a new node of the same shape
    y.detach_()            # rebound again
    assert (y.shape, y.size, y.dtype) == ((2, 3), 6, np.float64)
    np.testing.assert_array_equal(y.numpy(), np.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="cannot change a tensor's shape"):
        y.add_(np.ones((2, 2, 3)))
    assert y.shape == (2, 3)


def test_first_read_of_a_big_tensors_shape_takes_the_gil_back():
    # the core lets the GIL go when it resolves a node of AD_LONG_WORK elements or more (long
    # work): the C getter must take it back before it builds the tuple (it crashed here)
    for dtype in DTYPES:
        t = ad.tensor(np.zeros((lib.AD_LONG_WORK, 2), dtype))
        assert t.shape == (lib.AD_LONG_WORK, 2) and t.shape == tuple(t.shape)
        u = ad.tensor(np.zeros((2, lib.AD_LONG_WORK), dtype))
        assert u.dtype == dtype and u.shape == (2, lib.AD_LONG_WORK)
