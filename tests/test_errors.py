"""The bad-input catalogue: every case is a clear exception that names the op and the shapes or
dtypes involved, and the process survives it. After every test the calling thread's tape is
back where it was (the autouse fixture), so an error path that leaks nodes fails here too."""
import gc
import sys
import threading

import numpy as np
import pytest

import pyautodiff as ad


@pytest.fixture(autouse=True)
def tape_returns_to_baseline():
    gc.collect()
    before = ad.tape_stats()
    yield
    gc.collect()
    after = ad.tape_stats()
    assert (after["live_nodes"], after["live_bytes"]) == (before["live_nodes"], before["live_bytes"])


def still_works():
    """The core is usable after the error: a small graph runs forward and backward."""
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])


def raises(exc, fn, *fragments):
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    still_works()
    return message


# ---- shapes ------------------------------------------------------------------------------------

def test_incompatible_broadcast():
    a, b = ad.ones((2, 3)), ad.ones((4,))
    raises(ValueError, lambda: ad.add(a, b), "add", "(2, 3)", "(4,)")
    raises(ValueError, lambda: a * np.ones((3, 2)), "multiply", "(2, 3)", "(3, 2)")
    raises(ValueError, lambda: ad.maximum(a, ad.ones((2, 1, 5))), "maximum", "(2, 1, 5)")
    raises(ValueError, lambda: ad.broadcast_to(a, (3, 3)), "broadcast_to", "(2, 3)", "(3, 3)")


def test_matmul_inner_mismatch_and_0d_operands():
    raises(ValueError, lambda: ad.ones((2, 3)) @ ad.ones((2, 4)), "matmul", "(2, 3)", "(2, 4)", "3 != 2")
    raises(ValueError, lambda: ad.matmul(ad.ones((5, 2, 3)), ad.ones((4,))), "matmul", "(5, 2, 3)", "(4,)")
    raises(ValueError, lambda: ad.matmul(ad.ones((2, 2, 3)), ad.ones((3, 3, 2))), "matmul")
    raises(ValueError, lambda: ad.matmul(ad.tensor(2.0), ad.ones((3,))), "matmul", "()", "(3,)")
    raises(ValueError, lambda: ad.ones((3,)) @ ad.tensor(2.0), "matmul", "(3,)", "()")


def test_bad_axes():
    x = ad.ones((2, 3))
    for f in (ad.sum, ad.mean, ad.max, ad.min):
        raises(ValueError, lambda: f(x, axis=2), "axis 2 is out of bounds", "dimension 2")
        raises(ValueError, lambda: f(x, axis=-3), "axis -3 is out of bounds")
        raises(ValueError, lambda: f(x, axis=(0, 0)), "duplicate")
        raises(ValueError, lambda: f(x, axis=(1, -1)), "duplicate")
    raises(ValueError, lambda: ad.sum(x, axis=2**70), "does not fit in int64")
    raises(TypeError, lambda: ad.sum(x, axis=1.5), "axis")
    raises(TypeError, lambda: ad.sum(x, axis="a"), "axis")
    raises(ValueError, lambda: ad.transpose(x, (0, 0)), "transpose", "repeated axis")
    raises(ValueError, lambda: ad.transpose(x, (0, 2)), "transpose", "out of bounds")
    raises(ValueError, lambda: ad.transpose(x, (0,)), "transpose", "1 entries", "2 dimensions")


def test_reshape_to_incompatible_size():
    x = ad.ones((2, 3))
    raises(ValueError, lambda: x.reshape(4, 2), "reshape", "(2, 3)", "(4, 2)")
    raises(ValueError, lambda: x.reshape(-1, 4), "reshape", "(2, 3)")
    raises(ValueError, lambda: x.reshape(-1, -1), "only specify one unknown dimension")
    raises(ValueError, lambda: x.reshape(2**64, 1), "does not fit in int64")
    raises(ValueError, lambda: ad.reshape(ad.zeros((0, 3)), (-1, 0)), "reshape")


def test_float_dimensions_are_a_type_error_not_truncated():
    # regression: int(2.5) silently made a shape of 2
    raises(TypeError, lambda: ad.zeros((2.5,)), "shape")
    raises(TypeError, lambda: ad.ones((2, 3)).reshape(3.0, 2), "shape")


def test_index_out_of_range():
    t = ad.tensor(np.ones((3, 2)), requires_grad=True)
    raises(IndexError, lambda: t[5], "index 5", "axis 0", "size 3")
    raises(IndexError, lambda: t[-4], "index -4", "size 3")
    raises(IndexError, lambda: t[0, 2], "index 2", "axis 1", "size 2")
    raises(IndexError, lambda: t[np.array([0, 3])], "index 3", "size 3")
    raises(IndexError, lambda: t[:, 7], "index 7", "axis 1")
    # in range, the gradient scatters back (repeated indices accumulate)
    t[np.array([0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [[2, 2], [0, 0], [1, 1]])


# ---- backward misuse ---------------------------------------------------------------------------

def test_backward_on_non_scalar_without_grad():
    x = ad.tensor(np.ones((2, 3)), requires_grad=True)
    raises(RuntimeError, lambda: (x * 2.0).backward(), "(2, 3)", "grad")


def test_one_element_counts_as_scalar():
    x = ad.tensor([[3.0]], requires_grad=True)
    (x * 2.0).backward()
    assert x.grad.numpy().tolist() == [[2.0]]


def test_grad_of_wrong_shape_or_dtype():
    x = ad.tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2.0
    raises(ValueError, lambda: y.backward(np.ones((3, 2))), "(3, 2)", "(2, 3)")
    raises(ValueError, lambda: y.backward(np.ones(6)), "(6,)", "(2, 3)")
    raises(TypeError, lambda: y.backward(np.ones((2, 3)) * 1j), "complex128")
    raises(TypeError, lambda: y.backward(np.full((2, 3), "a")), "<U1")
    raises(TypeError, lambda: y.backward(np.array([[None] * 3] * 2)), "object")
    # a float grad of the other float dtype is cast, ints become the tensor's dtype
    y.backward(np.full((2, 3), 0.5, dtype=np.float32), retain_graph=True)
    y.backward(np.ones((2, 3), dtype=np.int64))
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 3.0))


def test_assigned_grad_of_wrong_shape():
    x = ad.tensor(np.ones((2, 3)), requires_grad=True)

    def assign():
        x.grad = np.ones(3)
    raises(ValueError, assign, "(3,)", "(2, 3)")


def test_backward_twice_without_retain_graph():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = (ad.exp(x) * 3.0).sum()
    y.backward()
    raises(RuntimeError, y.backward, "retain_graph=True")
    np.testing.assert_allclose(x.grad.numpy(), 3 * np.exp([1.0, 2.0]), rtol=1e-15)


def test_using_a_tensor_after_its_graph_was_released():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    h = ad.tanh(x)
    loss = (h * 2.0).sum()
    loss.backward()
    # h's graph went with loss's backward: its value is still there, its graph is not
    np.testing.assert_allclose(h.numpy(), np.tanh([1.0, 2.0]), rtol=1e-15)
    raises(RuntimeError, lambda: h.sum().backward(), "already released", "retain_graph=True")
    raises(RuntimeError, lambda: (h * 3.0).sum().backward(), "retain_graph=True")
    # detached, the values are a fresh leaf
    d = h.detach()
    d.requires_grad = True
    (d * 3.0).sum().backward()
    np.testing.assert_array_equal(d.grad.numpy(), [3.0, 3.0])


def test_backward_on_tensor_without_grad():
    raises(RuntimeError, lambda: ad.ones(1).backward(), "does not require grad")
    with ad.no_grad():
        y = ad.ones(1, requires_grad=True) * 2.0
    raises(RuntimeError, y.backward, "does not require grad")


# ---- data that cannot become a tensor ----------------------------------------------------------

@pytest.mark.parametrize("data, fragment", [
    ([1 + 2j], "complex"),
    (np.array([1, 2], dtype=np.complex64), "complex64"),
    (np.array([object(), object()]), "object"),
    ("abc", "<U3"),
    (["a", "b"], "<U1"),
    (b"abc", "|S3"),
    (None, "object"),
    ({"a": 1}, "object"),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
    (np.zeros(2, dtype=[("a", "f8")]), "('a', '<f8')"),
    ([2**70], "object"),
])
def test_non_real_data_is_a_type_error(data, fragment):
    raises(TypeError, lambda: ad.tensor(data), fragment)
    if isinstance(data, np.ndarray):
        raises(TypeError, lambda: ad.ones(2) + data, fragment)
        raises(TypeError, lambda: data * ad.ones(2), fragment)


def test_ragged_nested_lists_are_a_value_error():
    raises(ValueError, lambda: ad.tensor([[1, 2], [3]]), "ragged")
    raises(ValueError, lambda: ad.tensor([[1.0], [2.0, 3.0], []]), "ragged")


def test_too_many_dimensions():
    raises(ValueError, lambda: ad.tensor(np.zeros((1,) * 9)), "at most 8 dimensions")
    raises(ValueError, lambda: ad.zeros((1,) * 9), "at most 8 dimensions")


def test_dtype_argument_must_be_a_float_dtype():
    raises(TypeError, lambda: ad.tensor([1.0], dtype=np.int32), "float32 or float64")
    raises(TypeError, lambda: ad.tensor([1.0], dtype="complex64"), "float32 or float64")
    raises(TypeError, lambda: ad.zeros(3, dtype="nonsense"), "float32 or float64")


# ---- IEEE values -------------------------------------------------------------------------------

def test_nan_and_inf_inputs_propagate_per_ieee():
    v = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0])
    x = ad.tensor(v, requires_grad=True)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(ad.exp(x).numpy(), np.exp(v))
        np.testing.assert_array_equal(ad.log(x).numpy(), np.log(v))
        np.testing.assert_array_equal(ad.sqrt(x).numpy(), np.sqrt(v))
        np.testing.assert_array_equal((x * 0.0).numpy(), v * 0.0)
        np.testing.assert_array_equal((1.0 / x).numpy(), 1.0 / v)
        np.testing.assert_array_equal(ad.tanh(x).numpy(), np.tanh(v))
        np.testing.assert_array_equal(ad.sigmoid(x).numpy(), 1 / (1 + np.exp(-v)))
    assert np.isnan(ad.sum(x).item()) and np.isnan(ad.max(x).item())
    assert ad.sum(ad.tensor([np.inf, 1.0])).item() == np.inf
    assert np.isnan(ad.sum(ad.tensor([np.inf, -np.inf])).item())
    # gradients are IEEE too: d/dx 3x is 3 whatever x is; d/dx exp(x) is exp(x)
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(6, 3.0))
    x.grad = None
    ad.exp(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.exp(v))


def test_zero_cotangent_contributes_zero_even_at_singular_points():
    # the NaN-safety rule: masked branches keep finite gradients
    x = ad.tensor([0.0, 4.0], requires_grad=True)
    (ad.sqrt(x) * np.array([0.0, 1.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.25])
    x.grad = None
    ad.sqrt(x).sum().backward()
    assert x.grad.numpy()[0] == np.inf


def test_infinite_cotangent_times_zero_derivative_is_nan():
    # regression, found by the differential fuzzer: abs, relu, clip and power replaced a nonzero
    # cotangent by their zero local derivative instead of multiplying by it. d/dx log(abs(x)) at
    # 0: log's VJP gives inf, abs' derivative there is 0, and inf * 0 is NaN (IEEE; PyTorch agrees)
    for f, x0 in ((ad.abs, 0.0), (ad.relu, -1.0), (lambda t: ad.clip(t, -1.0, 0.0), 5.0),
                  (lambda t: ad.power(0.0, t) - 1.0, 0.0), (lambda t: t ** 0.0 - 1.0, 3.0),
                  (lambda t: ad.power(t, ad.zeros(())) - 1.0, 3.0)):
        for dtype in (np.float32, np.float64):
            x = ad.tensor(np.array(x0, dtype), requires_grad=True)
            ad.log(f(x)).backward()
            assert np.isnan(x.grad.item())
    # a finite cotangent still gets exactly 0 there
    x = ad.tensor(0.0, requires_grad=True)
    ad.abs(x).backward()
    assert x.grad.item() == 0.0


def test_zero_cotangent_through_the_softmax_family_at_nan_outputs():
    # regression, found by the differential fuzzer: softmax(x) with x holding +inf is NaN, and an
    # all-zero cotangent must still contribute exactly 0 (the NaN-safety rule); C's softmax and
    # the reference's softmax/log_softmax multiplied the NaN into the contracted sum
    from pyautodiff.reference import REFERENCE
    xv = np.array([np.inf, 1.0])
    for name, f in (("softmax", ad.softmax), ("log_softmax", ad.log_softmax), ("logsumexp", ad.logsumexp)):
        x = ad.tensor(xv, requires_grad=True)
        y = f(x)
        assert np.isnan(y.numpy()).any() or name == "logsumexp"
        g = np.zeros(y.shape)
        y.backward(g)
        np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])
        with np.errstate(all="ignore"):
            (ref,) = REFERENCE[name].vjp(g, y.numpy(), xv)
        np.testing.assert_array_equal(ref, [0.0, 0.0])


# ---- empty tensors -----------------------------------------------------------------------------

def test_empty_tensors():
    e = ad.tensor(np.zeros((0, 3)), requires_grad=True)
    s = e.sum()
    assert s.shape == () and s.item() == 0.0
    s.backward()
    assert e.grad.shape == (0, 3) and e.grad.numpy().size == 0
    assert ad.sum(ad.zeros((0, 3)), axis=0).numpy().tolist() == [0.0, 0.0, 0.0]
    assert ad.sum(ad.zeros((3, 0)), axis=0).shape == (0,)
    assert (ad.zeros((0, 3)) + ad.ones((3,))).shape == (0, 3)
    assert ad.matmul(ad.zeros((0, 3)), ad.ones((3, 4))).shape == (0, 4)
    assert np.isnan(ad.zeros((0,)).mean().item())
    raises(ValueError, lambda: ad.max(ad.zeros((0, 3))), "max", "(0, 3)", "zero-size")
    raises(ValueError, lambda: ad.min(ad.zeros((2, 0)), axis=1), "min", "(2, 0)")
    assert ad.max(ad.zeros((0, 3)), axis=1).shape == (0,)


def test_empty_inner_dimension_matmul_gives_zeros_and_empty_grads():
    a = ad.tensor(np.zeros((2, 0)), requires_grad=True)
    b = ad.tensor(np.zeros((0, 3)), requires_grad=True)
    p = a @ b
    np.testing.assert_array_equal(p.numpy(), np.zeros((2, 3)))
    p.sum().backward()
    assert a.grad.shape == (2, 0) and b.grad.shape == (0, 3)


def test_empty_with_huge_other_dimensions():
    # regression: element counts of (0, 2^40, 2^40) overflowed int64 inside the core (UB), and
    # a matmul of 2^50 empty matrices looped for hours
    z = ad.zeros((0, 2**40, 2**40), requires_grad=True)
    assert z.size == 0
    assert ad.sum(z, axis=(1, 2)).shape == (0,)
    assert (z * z).shape == (0, 2**40, 2**40)
    a = ad.zeros((2**30, 2**20, 0, 3), requires_grad=True)
    b = ad.tensor(np.ones((3, 4)), requires_grad=True)
    p = ad.matmul(a, b)
    assert p.shape == (2**30, 2**20, 0, 4)
    p.sum().backward()
    np.testing.assert_array_equal(b.grad.numpy(), np.zeros((3, 4)))
    # the batched sweeps (functional vjp/jvp) and softmax had the same two problems: a 108 PB
    # "out of memory", an endless loop, and a slice count overflowing int64
    out, vjp_fn = ad.vjp(lambda w: ad.matmul(a, w), b)
    (gw,) = vjp_fn(np.zeros(out.shape))
    np.testing.assert_array_equal(gw.numpy(), np.zeros((3, 4)))
    _, t = ad.jvp(lambda w: ad.matmul(a, w), (b,), (np.ones((3, 4)),))
    assert t.shape == (2**30, 2**20, 0, 4)
    assert ad.softmax(z, axis=0).shape == z.shape
    assert ad.logsumexp(z, axis=(1, 2)).shape == (0,)
    lse = ad.logsumexp(ad.zeros((0, 3), requires_grad=True), axis=0)
    assert lse.numpy().tolist() == [-np.inf] * 3
    # regression (C API fuzzer): concatenate's block sizes overflowed int64 the same way
    e = ad.zeros((0, 2**62, 3), requires_grad=True)
    assert ad.concatenate([e, e], axis=0).shape == (0, 2**62, 3)


# ---- sizes past int64 or past memory -----------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: ad.zeros((2**40, 2**30)),
    lambda: ad.zeros((10**6, 10**6)),
    lambda: ad.ones((2**62, 4), dtype="float32"),
    lambda: ad.full((2**63 - 1, 2**63 - 1), 1.0),
    lambda: ad.zeros((2**63,)),
    lambda: ad.broadcast_to(ad.ones(1), (10**6, 10**6)),
    lambda: ad.broadcast_to(ad.ones(1), (2**40, 2**40)),
    lambda: ad.ones((10**6, 1)) * ad.ones((1, 10**6)),
    lambda: ad.matmul(ad.ones((10**6, 1)), ad.ones((1, 10**6))),
])
def test_sizes_beyond_int64_or_memory_are_errors(make):
    raises((MemoryError, ValueError), make)


def test_negative_dimensions():
    raises(ValueError, lambda: ad.zeros((-1, 3)), "negative dimension")
    raises(ValueError, lambda: ad.ones((2, 3)).reshape(-2, 3), "negative dimension")
    raises(ValueError, lambda: ad.broadcast_to(ad.ones(3), (-1, 3)), "broadcast_to")


# ---- threads -----------------------------------------------------------------------------------

def run_in_thread(fn):
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:   # noqa: BLE001 - handed back to the test thread
            out["error"] = e
    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_tensor_from_another_threads_tape():
    foreign = run_in_thread(lambda: ad.tensor([1.0, 2.0], requires_grad=True))
    # reading and dropping work on any thread; ops do not, and say why
    np.testing.assert_array_equal(foreign.numpy(), [1.0, 2.0])
    assert foreign.shape == (2,) and foreign.requires_grad
    raises(RuntimeError, lambda: foreign * 2.0, "another thread")
    raises(RuntimeError, lambda: ad.add(ad.ones(2), foreign), "another thread")
    raises(RuntimeError, lambda: foreign.sum(), "another thread")
    mine = ad.ones(2, requires_grad=True)

    def assign():
        mine.grad = foreign
    raises(RuntimeError, assign, "another thread")
    # a foreign tensor's values can come over explicitly
    local = ad.tensor(foreign.numpy())
    assert (local * 2.0).numpy().tolist() == [2.0, 4.0]
    del foreign


def _mlp_training(seed, steps=200):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, 4))
    y = rng.normal(size=(16, 1))
    w1 = ad.tensor(rng.normal(size=(4, 8)) * 0.5, requires_grad=True)
    b1 = ad.tensor(np.zeros(8), requires_grad=True)
    w2 = ad.tensor(rng.normal(size=(8, 1)) * 0.5, requires_grad=True)
    params = [w1, b1, w2]
    losses = []
    for _ in range(steps):
        h = ad.tanh(x @ params[0] + params[1])
        loss = ((h @ params[2] - y) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        new = []
        for p in params:
            q = ad.tensor(p.numpy() - 0.05 * p.grad.numpy(), requires_grad=True)
            new.append(q)
        params = new
    return np.array(losses), [p.numpy() for p in params]


def test_four_threads_are_bit_identical_to_sequential():
    sequential = [_mlp_training(seed) for seed in range(4)]
    results = [None] * 4

    def work(k):
        results[k] = _mlp_training(k)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (loss_s, params_s), (loss_t, params_t) in zip(sequential, results):
        assert loss_s[-1] < loss_s[0]
        assert loss_s.tobytes() == loss_t.tobytes()
        for a, b in zip(params_s, params_t):
            assert a.tobytes() == b.tobytes()


# ---- copies in and out -------------------------------------------------------------------------

def test_mutating_the_input_array_does_not_change_the_tensor():
    a = np.array([1.0, 2.0, 3.0])
    t = ad.tensor(a, requires_grad=True)
    a[:] = -7.0
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0, 3.0])
    f = np.array([1.0, 2.0], dtype=np.float32)
    u = ad.tensor(f)
    f[0] = 100.0
    assert u.numpy().tolist() == [1.0, 2.0] and u.dtype == np.float32


def test_arrays_from_numpy_cannot_corrupt_the_tape():
    x = ad.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * x
    for arr in (y.numpy(), np.asarray(y), np.array(y)):
        arr[:] = 1e9
        assert arr.flags.writeable
    np.testing.assert_array_equal(y.numpy(), [1.0, 4.0, 9.0])
    y.sum().backward()
    g = x.grad.numpy()
    g[:] = 0.0
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0, 6.0])


def test_grad_assignment_is_a_copy():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    raises(RuntimeError, lambda: setattr(x, "grad", x), "its own grad")
    # regression: a grad computed from x held x in a reference cycle (a leak the fixture catches)
    x.grad = x * 2.0
    assert x.grad.numpy().tolist() == [2.0, 4.0]
    # the assigned tensor is not changed by later accumulation into the grad
    g = ad.tensor([5.0, 5.0])
    y = ad.tensor([0.0, 1.0], requires_grad=True)
    y.grad = g
    (y * 2.0).sum().backward()
    assert g.numpy().tolist() == [5.0, 5.0]
    assert y.grad.numpy().tolist() == [7.0, 7.0]


def test_zero_d_inputs_stay_zero_d():
    # regression: as_float_array used ascontiguousarray, which turns 0-d data into shape (1,)
    assert ad.tensor(1.5).shape == ()
    assert ad.tensor(np.float32(2.0)).shape == () and ad.tensor(np.float32(2.0)).dtype == np.float32
    assert (ad.ones((2,)) * np.float64(3.0)).shape == (2,)
    assert ad.exp(np.array(0.0)).shape == ()
    raises(TypeError, lambda: len(ad.tensor(1.0)), "0-d")


def test_numpy_and_list_operands_of_functions():
    # regression: ad.exp(array) released the temporary tensor before the core read its handle
    x = np.array([0.0, 1.0])
    np.testing.assert_allclose(ad.exp(x).numpy(), np.exp(x), rtol=1e-15)
    np.testing.assert_allclose(ad.matmul(np.eye(2), [1.0, 2.0]).numpy(), [1.0, 2.0])
    np.testing.assert_allclose(ad.add([1.0, 2.0], x).numpy(), [1.0, 3.0])
    assert ad.sum([[1.0, 2.0]], axis=1).numpy().tolist() == [3.0]
    assert ad.reshape([1.0, 2.0], (2, 1)).shape == (2, 1)
    assert ad.transpose([[1.0, 2.0]]).shape == (2, 1)
    assert ad.broadcast_to([1.0], (3,)).shape == (3,)
    assert ad.astype([1.0], "float32").dtype == np.float32


def test_unusual_layouts_are_converted_not_reinterpreted():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    cases = [base[:, ::2], base[::-1], base.T, np.asfortranarray(base),
             base.astype(">f8"), base.astype(np.int64), base.astype(np.int8), base > 5,
             base.astype(np.float16)]
    for arr in cases:
        t = ad.tensor(arr)
        np.testing.assert_array_equal(t.numpy(), np.asarray(arr, dtype=t.dtype))
        assert t.dtype == (np.float32 if arr.dtype == np.float16 else np.float64)
    # int64 values past 2^53 are converted (rounded) as NumPy does, never reinterpreted as bits
    big = np.array([2**53 + 1, -2**62], dtype=np.int64)
    np.testing.assert_array_equal(ad.tensor(big).numpy(), big.astype(np.float64))


# ---- scale -------------------------------------------------------------------------------------

def test_fan_out_of_one_tensor_used_100000_times():
    x = ad.tensor([1.0, -2.0], requires_grad=True)
    acc = x
    for _ in range(100_000):
        acc = acc + x
    np.testing.assert_array_equal(acc.numpy(), [100_001.0, -200_002.0])
    acc.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [100_001.0, 100_001.0])


def test_sweep_survives_the_tape_growing_under_it():
    # regression (heap-use-after-free under ASan): x's first grad node is created at the top of
    # the sweep while the tape array is exactly full, so pushing it moved the array
    x = ad.tensor([1.0], requires_grad=True)
    y = x + 1.0
    while ad.tape_stats()["tape_length"] % 1024 != 1022:
        y = y + 1.0
    top = (y * x).sum()
    top.backward()
    assert x.grad.item() == top.item() + 1.0


def test_deep_recursion_limits_do_not_apply():
    x = ad.tensor(0.5, requires_grad=True)
    y = x
    for _ in range(3 * sys.getrecursionlimit()):
        y = ad.sin(y) * 1.0
    y.backward()
    assert np.isfinite(x.grad.item()) and x.grad.item() != 0.0


# ---- the elementwise ops' parameters (pyautodiff/opdefs.py rows) ----
def test_elementwise_parameters_are_checked_and_named():
    x = ad.tensor(np.array([-1.0, 0.5, 2.0]))
    with pytest.raises(TypeError, match="leaky_relu: negative_slope must be a real number"):
        ad.leaky_relu(x, negative_slope="0.1")
    with pytest.raises(TypeError, match="elu: alpha must be a real number"):
        ad.elu(x, alpha=np.ones(2))
    with pytest.raises(TypeError, match="leaky_relu"):
        ad.leaky_relu(x, slope=0.1)               # no such parameter
    with pytest.raises(ValueError, match=r"hardtanh: min_val \(2.0\) must not exceed max_val \(1.0\)"):
        ad.hardtanh(x, 2.0, 1.0)
    with pytest.raises(ValueError, match="gelu: approximate must be 'none' or 'tanh'"):
        ad.gelu(x, approximate="erf")
    with pytest.raises(TypeError):
        ad.round(x, 1.5)
    # parameters by position and keyword, NumPy/PyTorch names, and the result is right
    np.testing.assert_array_equal(ad.leaky_relu(x, 0.5).numpy(), [-0.5, 0.5, 2.0])
    np.testing.assert_array_equal(ad.hardtanh(x, min_val=0.0, max_val=1.0).numpy(), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(ad.round(ad.tensor([1.234, -5.678]), 2).numpy(), [1.23, -5.68], rtol=1e-15)


def test_binary_elementwise_shapes_and_dtypes_are_named():
    with pytest.raises(ValueError, match=r"logaddexp.*\(3,\).*\(4,\)"):
        ad.logaddexp(np.ones(3), np.ones(4))
    with pytest.raises(TypeError):
        ad.arctan2(np.ones(3, dtype=np.complex128), np.ones(3))
    # a float32 tensor with a Python number stays float32 (NumPy's weak scalars), with an array promotes
    t = ad.tensor(np.ones(3, np.float32))
    assert ad.hypot(t, 2.0).dtype == np.float32 and (t % 2.0).dtype == np.float32
    assert ad.mod(t, np.ones(3)).dtype == np.float64


def test_a_stale_handle_to_a_reused_slot_is_detected():
    """A released node's slot is reused at once by the next node; the old handle carries the old
    generation and must be refused, not resolve to the new node."""
    from pyautodiff._capi import ffi, lib
    old = lib.ad_full(lib.AD_F64, 0, ffi.NULL, 1.0, 0)
    assert lib.ad_release(old) == lib.AD_OK
    new = lib.ad_full(lib.AD_F64, 0, ffi.NULL, 2.0, 0)
    try:
        slot = (1 << 26) - 1                  # handle = tape | generation (22 bits) | slot (26 bits)
        assert new & slot == old & slot and new != old
        info = ffi.new("ad_info_t *")
        assert lib.ad_info(old, info) == -lib.AD_ERR_HANDLE       # (statuses are returned negated)
        assert "released" in ffi.string(lib.ad_last_error()).decode()
        assert lib.ad_info(new, info) == lib.AD_OK and ffi.cast("double *", info.data)[0] == 2.0
    finally:
        lib.ad_release(new)
