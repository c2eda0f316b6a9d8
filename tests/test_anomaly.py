"""ad.detect_anomaly(): a NaN made from NaN-free values, in a forward kernel, a VJP or the
accumulation of gradients, is a FloatingPointError naming the op, its input shapes and the line
of user code that created the op. NaN that comes in with the data is not reported."""
import gc
import threading

import numpy as np
import pytest

import pyautodiff as ad


def _leaf(values, requires_grad=True):
    return ad.tensor(np.array(values, dtype=np.float64), requires_grad=requires_grad)


@pytest.mark.parametrize("name, make", [
    ("log", lambda x: ad.log(x - 3.0)),
    ("sqrt", lambda x: ad.sqrt(-x)),
    ("divide", lambda x: ad.divide(x * 0.0, ad.zeros((3,)))),
    ("subtract", lambda x: ad.subtract(ad.exp(x * 1000.0), ad.exp(x * 1000.0))),
    ("multiply", lambda x: ad.multiply(ad.exp(x * 1000.0), ad.zeros((2, 3)))),
    ("mean", lambda x: ad.mean(ad.zeros((0, 2)), axis=0)),
])
def test_forward_nan_from_clean_inputs_names_op_shapes_and_site(name, make):
    x = _leaf(np.ones((2, 3)))
    gc.collect()   # no earlier test's cycles may be collected between the two counts
    before = ad.tape_stats()
    with ad.detect_anomaly():
        with pytest.raises(FloatingPointError) as info:
            make(x)
    message = str(info.value)
    del info   # its traceback holds the frames, and so the temporaries, of the failed op
    assert f"anomaly: {name} produced NaN" in message
    assert "float64" in message
    # the creation site is this test's lambda line, with its source text
    assert "test_anomaly.py" in message and f'("{name}", lambda x:' in message
    # the failed op recorded nothing
    assert ad.tape_stats()["live_nodes"] == before["live_nodes"]


def test_input_shapes_in_message():
    a = _leaf(np.zeros((4, 1)))
    b = _leaf(np.zeros((3,)))
    with ad.detect_anomaly():
        with pytest.raises(FloatingPointError, match=r"divide .*\(4, 1\) float64 and \(3,\) float64"):
            ad.divide(a, b)


def test_nan_in_the_data_propagates_without_error():
    x = _leaf([np.nan, 4.0, -np.inf])
    with ad.detect_anomaly():
        y = ad.sqrt(x)
        s = ad.sum(y * 2.0)
        s.backward()
    np.testing.assert_array_equal(y.numpy(), [np.nan, 2.0, np.nan])
    assert np.isnan(s.item())
    np.testing.assert_array_equal(x.grad.numpy(), [np.nan, 0.5, np.nan])


def test_backward_vjp_nan_names_the_op_and_where_it_was_created():
    # log(a * b) at a = 1, b = 0: forward is -inf (no NaN), log's VJP gives inf, and
    # multiply's VJP for a computes inf * b = inf * 0 = NaN
    a = _leaf([1.0, 2.0, 3.0])
    b = _leaf([0.0, 1.0, 1.0])
    with ad.detect_anomaly():
        p = a * b  # anomaly site: multiply
        loss = ad.sum(ad.log(p))
        assert loss.item() == -np.inf
        with pytest.raises(FloatingPointError) as info:
            loss.backward()
    message = str(info.value)
    # the failed contribution left no half-made grad behind (it held uninitialised memory once)
    assert a.grad is None and b.grad is None
    assert "backward (VJP) of multiply produced NaN for its input 0" in message
    assert "(3,) float64 and (3,) float64" in message
    assert "p = a * b  # anomaly site: multiply" in message
    assert "in test_backward_vjp_nan_names_the_op_and_where_it_was_created" in message


def test_inf_minus_inf_where_gradients_accumulate():
    x = _leaf([0.0, 1.0])
    with ad.detect_anomaly():
        d = ad.sqrt(x) - ad.sqrt(x)  # anomaly site: accumulation
        with pytest.raises(FloatingPointError) as info:
            ad.sum(d).backward()
    assert "adding the gradient from sqrt" in str(info.value)
    assert "# anomaly site: accumulation" in str(info.value)
    # off, the same program is plain IEEE: inf - inf = NaN in the gradient
    x2 = _leaf([0.0, 1.0])
    ad.sum(ad.sqrt(x2) - ad.sqrt(x2)).backward()
    assert np.isnan(x2.grad.numpy()[0]) and x2.grad.numpy()[1] == 0.0


def test_off_by_default_restored_after_errors_and_nests():
    x = _leaf([-1.0])
    assert np.isnan(ad.log(x).item())
    with pytest.raises(FloatingPointError):
        with ad.detect_anomaly():
            ad.log(x)
    assert np.isnan(ad.log(x).item())
    with ad.detect_anomaly():
        with ad.detect_anomaly():
            pass
        with pytest.raises(FloatingPointError):
            ad.log(x)
    assert np.isnan(ad.log(x).item())


def test_decorator():
    @ad.detect_anomaly()
    def f(x):
        return ad.log(x)

    with pytest.raises(FloatingPointError):
        f(_leaf([-2.0]))
    assert np.isnan(ad.log(_leaf([-2.0])).item())


def _model(xv, wv, bv):
    w = ad.tensor(wv, requires_grad=True)
    b = ad.tensor(bv, requires_grad=True)
    h = ad.tanh(ad.matmul(xv, w) + b)
    loss = ad.mean(h * h) + ad.max(h) + ad.sum(ad.sigmoid(h), axis=0).sum()
    return loss, (w, b)


def _sweep_shortcuts(xv, wv, bv):
    # every shortcut of the reverse sweep (csrc/sweep.c): a broadcast input summed inside the
    # kernel (w, 0-d), the add handing its adjoint buffer down, h * h in one pass, and the mean
    # giving h * x one adjoint value
    x, w = ad.tensor(xv, requires_grad=True), ad.tensor(wv[0, 0], requires_grad=True)
    h = ad.tanh(x * w + 0.5) + x
    return (h * h).sum() + (h - w).sum() + ad.mean(h * x), (x, w)


@pytest.mark.parametrize("model", [_model, _sweep_shortcuts])
def test_same_gradients_with_and_without_anomaly_mode(model):
    rng = np.random.default_rng(0)
    xv, wv, bv = rng.normal(size=(5, 3)), rng.normal(size=(3, 4)), rng.normal(size=(4,))

    def run():
        loss, leaves = model(xv, wv, bv)
        loss.backward()
        return [loss.item()] + [t.grad.numpy() for t in leaves]

    off = run()
    with ad.detect_anomaly():
        on = run()
    assert off[0] == on[0]                      # bit for bit: the mode only checks
    for a, b in zip(off[1:], on[1:]):
        np.testing.assert_array_equal(a, b)


def test_failed_backward_leaves_the_tape_clean():
    # earlier tests' exceptions keep tensors in frame cycles until the collector runs; collect on
    # both sides so the counters compare this test's graph only
    gc.collect()
    before = ad.tape_stats()
    a = _leaf([1.0])
    b = _leaf([0.0])
    with ad.detect_anomaly():
        loss = ad.sum(ad.log(a * b))
        with pytest.raises(FloatingPointError):
            loss.backward()
    del a, b, loss
    gc.collect()
    after = ad.tape_stats()
    assert after["live_nodes"] == before["live_nodes"]
    assert after["live_bytes"] == before["live_bytes"]


def test_mode_is_per_thread():
    seen = {}

    def other():
        seen["value"] = ad.log(_leaf([-1.0])).item()

    with ad.detect_anomaly():
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with pytest.raises(FloatingPointError):
            ad.log(_leaf([-1.0]))
    assert np.isnan(seen["value"])
