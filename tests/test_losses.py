"""The losses of nn.functional (pyautodiff/nn/_losses.py) against NumPy formulas written here from
PyTorch's documentation, finite-difference gradient checks in float64, float32 forward, the
stability of the logits forms at huge logits, and the errors for inputs that do not fit."""
import numpy as np
import pytest

import pyautodiff as ad
import pyautodiff.nn.functional as F

F32, F64 = np.float32, np.float64
RNG = np.random.default_rng(0)


def _log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _reduce(loss, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction](loss)


def ce_numpy(x, labels, weight=None, ignore_index=-100, reduction="mean", eps=0.0):
    """PyTorch's formula by loops: class axis 1, positions enumerated one by one."""
    logp = _log_softmax(x, 1)
    c = x.shape[1]
    w = np.ones(c) if weight is None else weight
    nll = np.zeros(labels.shape)
    smooth = np.zeros(labels.shape)
    wsum = 0.0
    for pos in np.ndindex(*labels.shape):
        y = labels[pos]
        if y == ignore_index:
            continue
        lp = logp[(pos[0], slice(None)) + pos[1:]]
        nll[pos] = -lp[y] * w[y]
        smooth[pos] = -(lp * w).sum()
        wsum += w[y]
    if reduction == "none":
        return (1 - eps) * nll + eps / c * smooth
    if reduction == "sum":
        return (1 - eps) * nll.sum() + eps / c * smooth.sum()
    return (1 - eps) * nll.sum() / wsum + eps / c * smooth.sum() / wsum


CE_CASES = [
    dict(shape=(6, 4), kw={}),
    dict(shape=(6, 4), kw=dict(reduction="sum")),
    dict(shape=(6, 4), kw=dict(reduction="none")),
    dict(shape=(6, 4), kw=dict(ignore_index=2)),
    dict(shape=(6, 4), kw=dict(weight=True, label_smoothing=0.25)),
    dict(shape=(6, 4), kw=dict(weight=True, label_smoothing=0.25, ignore_index=1, reduction="sum")),
    dict(shape=(3, 5, 2, 3), kw=dict(weight=True)),
    dict(shape=(3, 5, 4), kw=dict(label_smoothing=0.1, reduction="none", ignore_index=0)),
]


def _ce_args(case, rng):
    shape = case["shape"]
    x = rng.standard_normal(shape) * 2
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    kw = dict(case["kw"])
    if kw.get("weight") is True:
        kw["weight"] = rng.uniform(0.5, 2.0, shape[1])
    return x, labels, kw


@pytest.mark.parametrize("case", CE_CASES, ids=lambda c: f"{c['shape']}-{sorted(c['kw'])}")
def test_cross_entropy_matches_numpy(case):
    x, labels, kw = _ce_args(case, np.random.default_rng(1))
    want = ce_numpy(x, labels, kw.get("weight"), kw.get("ignore_index", -100), kw.get("reduction", "mean"),
                    kw.get("label_smoothing", 0.0))
    np.testing.assert_allclose(F.cross_entropy(x, labels, **kw).numpy(), want, rtol=1e-13, atol=1e-14)
    kw32 = dict(kw, weight=kw["weight"].astype(F32)) if "weight" in kw else kw
    got32 = F.cross_entropy(x.astype(F32), labels, **kw32)
    assert got32.dtype == F32
    np.testing.assert_allclose(got32.numpy(), want, rtol=2e-6, atol=2e-6)
    assert ad.gradcheck(lambda t: F.cross_entropy(t, labels, **kw), (x,))


def test_nll_loss_is_cross_entropy_on_log_probabilities():
    x, labels, kw = _ce_args(CE_CASES[6], np.random.default_rng(2))
    logp = _log_softmax(x, 1)
    np.testing.assert_allclose(F.nll_loss(logp, labels, weight=kw["weight"]).numpy(),
                               ce_numpy(x, labels, kw["weight"]), rtol=1e-13)
    assert ad.gradcheck(lambda t: F.nll_loss(t, labels, weight=kw["weight"], ignore_index=1), (logp,))


def test_cross_entropy_with_probability_targets():
    rng = np.random.default_rng(3)
    x, t, w = rng.standard_normal((5, 4)), rng.dirichlet(np.ones(4), 5), rng.uniform(0.5, 2, 4)
    eps = 0.2
    ts = t * (1 - eps) + eps / 4
    want = -(_log_softmax(x, 1) * ts * w).sum(1).mean()
    np.testing.assert_allclose(F.cross_entropy(x, ad.tensor(t), weight=w, label_smoothing=eps).numpy(), want,
                               rtol=1e-13)
    assert ad.gradcheck(lambda a, b: F.cross_entropy(a, b, weight=w, label_smoothing=eps), (x, t))


def test_cross_entropy_is_stable_at_huge_logits():
    x = ad.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 1e5]], requires_grad=True)
    loss = F.cross_entropy(x, [1, 2], label_smoothing=0.1)
    assert np.isfinite(loss.item())
    loss.backward()
    assert np.all(np.isfinite(x.grad.numpy()))


def test_all_ignored_mean_is_nan_as_pytorch():
    assert np.isnan(F.cross_entropy(np.zeros((2, 3)), [-100, -100]).item())


def _loss_and_grad(fn, x):
    t = ad.tensor(x, requires_grad=True)
    loss = fn(t)
    (loss * np.arange(1.0, loss.size + 1).reshape(loss.shape).astype(x.dtype)).sum().backward()
    return loss.numpy(), t.grad.numpy()


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 2)])
def test_unweighted_labels_give_the_bits_of_unit_weights(shape, reduction, dtype):
    # without weights or ignored labels the loss skips the weight masks (and folds its minus sign
    # into the divisor); the result must be the weighted path's with every weight 1, bit for bit
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    want_loss, want_grad = _loss_and_grad(
        lambda t: F.cross_entropy(t, labels, weight=np.ones(shape[1], dtype), reduction=reduction), x)
    got_loss, got_grad = _loss_and_grad(lambda t: F.cross_entropy(t, labels, reduction=reduction), x)
    np.testing.assert_array_equal(got_loss, want_loss)
    np.testing.assert_array_equal(got_grad, want_grad)
    np.testing.assert_allclose(got_loss, ce_numpy(x.astype(F64), labels, reduction=reduction),
                               rtol=1e-13 if dtype == F64 else 2e-6)
    logp = _log_softmax(x.astype(F64), 1).astype(dtype)
    np.testing.assert_array_equal(
        _loss_and_grad(lambda t: F.nll_loss(t, labels, reduction=reduction), logp)[1],
        _loss_and_grad(lambda t: F.nll_loss(t, labels, weight=np.ones(shape[1], dtype), reduction=reduction),
                       logp)[1])


@pytest.mark.parametrize("labels, ignore_index", [
    ([0, 2, 1, 2, 3], 0),         # ignore_index is the smallest label
    ([0, 2, 1, 2, 3], 3),         # ... the largest
    ([0, 3, 1, 3, 0], 2),         # between the labels, but none equals it
    ([0, 6, 1, 6, 3], 6),         # past the classes: ignored, not out of range
    ([0, -7, 1, 2, -7], -7),      # negative
    (np.array([0, 2, 1, 2, 3], np.uint8), -100),
    (ad.tensor([0.0, 2.0, 1.0, 3.0, 3.0]), 1),   # float labels held in a tensor
])
def test_labels_against_ignore_index(labels, ignore_index):
    x = np.random.default_rng(9).standard_normal((5, 4))
    plain = np.asarray(labels.numpy() if isinstance(labels, ad.Tensor) else labels).astype(np.int64)
    for reduction in ["mean", "sum", "none"]:
        want = ce_numpy(x, plain, ignore_index=ignore_index, reduction=reduction)
        got = F.cross_entropy(x, labels, ignore_index=ignore_index, reduction=reduction)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-13, atol=1e-15)
    assert ad.gradcheck(lambda t: F.cross_entropy(t, labels, ignore_index=ignore_index), (x,))
    out_of_range = plain.copy()
    out_of_range[0] = 4
    with pytest.raises(IndexError, match="label 4 is out of range for 4 classes"):
        F.cross_entropy(x, out_of_range, ignore_index=ignore_index)


def test_empty_batch():
    x = ad.tensor(np.zeros((0, 3)), requires_grad=True)
    assert np.isnan(F.cross_entropy(x, np.zeros(0, int)).item())
    loss = F.cross_entropy(x, np.zeros(0, int), reduction="sum")
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad.shape == (0, 3)
    # no spatial positions
    assert F.cross_entropy(np.zeros((2, 3, 0)), np.zeros((2, 0), int), reduction="sum").item() == 0.0


def test_bce_and_bce_with_logits():
    rng = np.random.default_rng(4)
    z, t, w = rng.standard_normal(7) * 4, rng.uniform(0, 1, 7), rng.uniform(0.5, 2, 7)
    pw = rng.uniform(0.5, 3, 7)
    p = 1 / (1 + np.exp(-z))
    want = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(F.binary_cross_entropy(p, t, reduction="none").numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(z, t, reduction="none").numpy(), want, rtol=1e-12)
    want_pw = -(pw * t * np.log(p) + (1 - t) * np.log(1 - p)) * w
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(z, t, weight=w, pos_weight=pw).numpy(),
                               want_pw.mean(), rtol=1e-12)
    np.testing.assert_allclose(F.binary_cross_entropy(p.astype(F32), t.astype(F32)).numpy(), want.mean(), rtol=1e-5)
    assert ad.gradcheck(lambda a, b: F.binary_cross_entropy(a, b, weight=w), (p, t))
    assert ad.gradcheck(lambda a, b: F.binary_cross_entropy_with_logits(a, b, pos_weight=pw, reduction="sum"), (z, t))


def test_bce_with_logits_is_exact_at_huge_logits_and_bce_clamps_its_logs():
    z = ad.tensor([800.0, -800.0, 0.0], requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(z, np.array([0.0, 1.0, 1.0]), reduction="sum")
    np.testing.assert_allclose(loss.item(), 1600 + np.log(2), rtol=1e-15)
    loss.backward()
    np.testing.assert_allclose(z.grad.numpy(), [1.0, -1.0, -0.5])
    # probabilities 0 and 1: each log clamped at -100 (PyTorch's rule), finite gradient
    p = ad.tensor([0.0, 1.0], requires_grad=True)
    loss = F.binary_cross_entropy(p, np.array([1.0, 0.0]), reduction="sum")
    assert loss.item() == 200.0
    loss.backward()
    assert np.all(np.isfinite(p.grad.numpy()))
    with pytest.raises(ValueError, match="binary_cross_entropy: input must be probabilities"):
        F.binary_cross_entropy(np.array([1.5]), np.array([1.0]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_losses(reduction):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    d = a - b
    cases = {
        "mse_loss": (F.mse_loss, {}, d ** 2),
        "l1_loss": (F.l1_loss, {}, np.abs(d)),
        "huber_loss": (F.huber_loss, {"delta": 0.7},
                       np.where(np.abs(d) < 0.7, 0.5 * d ** 2, 0.7 * (np.abs(d) - 0.35))),
        "smooth_l1_loss": (F.smooth_l1_loss, {"beta": 0.7},
                           np.where(np.abs(d) < 0.7, 0.5 * d ** 2 / 0.7, np.abs(d) - 0.35)),
        "smooth_l1_beta0": (F.smooth_l1_loss, {"beta": 0.0}, np.abs(d)),
    }
    for name, (fn, kw, want) in cases.items():
        got = fn(a, b, reduction=reduction, **kw)
        np.testing.assert_allclose(got.numpy(), _reduce(want, reduction), rtol=1e-13, err_msg=name)
        np.testing.assert_allclose(fn(a.astype(F32), b.astype(F32), reduction=reduction, **kw).numpy(),
                                   _reduce(want, reduction), rtol=1e-5, atol=1e-6, err_msg=name)
        assert ad.gradcheck(lambda x, y: fn(x, y, reduction=reduction, **kw), (a, b)), name


def test_huber_is_smooth_l1_times_beta():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal(9), rng.standard_normal(9)
    np.testing.assert_allclose(F.huber_loss(a, b, delta=0.4).numpy(), 0.4 * F.smooth_l1_loss(a, b, beta=0.4).numpy(),
                               rtol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
def test_kl_div(reduction):
    rng = np.random.default_rng(7)
    logp = _log_softmax(rng.standard_normal((3, 4)), 1)
    t = rng.dirichlet(np.ones(4), 3)
    t[0, 2] = 0.0                   # a zero target contributes exactly 0 (t log t -> 0)
    pointwise = np.where(t > 0, t * (np.log(np.where(t > 0, t, 1)) - logp), 0)
    want = pointwise.sum() / 3 if reduction == "batchmean" else _reduce(pointwise, reduction)
    np.testing.assert_allclose(F.kl_div(logp, t, reduction=reduction).numpy(), want, rtol=1e-13, atol=1e-15)
    logt = np.log(t + 0.1)
    want_log = np.exp(logt) * (logt - logp)
    want_log = want_log.sum() / 3 if reduction == "batchmean" else _reduce(want_log, reduction)
    np.testing.assert_allclose(F.kl_div(logp, logt, reduction=reduction, log_target=True).numpy(), want_log,
                               rtol=1e-13)
    x = ad.tensor(logp, requires_grad=True)
    F.kl_div(x, t, reduction="sum").backward()
    np.testing.assert_array_equal(x.grad.numpy(), -t)
    assert ad.gradcheck(lambda a, b: F.kl_div(a, b, reduction=reduction, log_target=True), (logp, logt))


def test_loss_errors_name_the_op_and_shapes():
    with pytest.raises(ValueError, match=r"mse_loss: input has shape \(3, 1\) but target has shape \(3,\)"):
        F.mse_loss(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="huber_loss: reduction must be one of"):
        F.huber_loss(np.zeros(3), np.zeros(3), reduction="avg")
    with pytest.raises(ValueError, match="delta must be positive"):
        F.huber_loss(np.zeros(3), np.zeros(3), delta=0)
    with pytest.raises(ValueError, match=r"cross_entropy: weight must have shape \(3,\)"):
        F.cross_entropy(np.zeros((2, 3)), [0, 1], weight=np.ones(2))
    with pytest.raises(IndexError, match="label 3 is out of range for 3 classes"):
        F.cross_entropy(np.zeros((2, 3)), [0, 3], ignore_index=1)
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(np.zeros((2, 3)), [0, 1], label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 4\)"):
        F.cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 3), int))


def test_unbatched_cross_entropy():
    # logits (C,) with a 0-d label: one sample, as PyTorch
    x, w = np.array([0.5, -1.0, 2.0, 0.0]), np.array([1.0, 2.0, 0.5, 1.5])
    want = ce_numpy(x[None], np.array([2]), w, eps=0.2)
    np.testing.assert_allclose(F.cross_entropy(x, np.int64(2), weight=w, label_smoothing=0.2).numpy(), want,
                               rtol=1e-14)
    assert ad.gradcheck(lambda t: F.cross_entropy(t, np.int64(2), weight=w, label_smoothing=0.2), (x,))


@pytest.mark.parametrize("dtype", [F64, F32])
def test_cross_entropy_second_derivatives(dtype):
    # mean cross-entropy's Hessian in the logits: (diag(p) - p p^T) / N within each row, 0 across
    # rows; through hessian (forward over reverse) and through backward(create_graph=True)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 3)).astype(dtype)
    labels = np.array([2, 0, 1, 2])
    p = np.exp(_log_softmax(x.astype(F64), 1))
    want = np.zeros((4, 3, 4, 3))
    for i in range(4):
        want[i, :, i, :] = (np.diag(p[i]) - np.outer(p[i], p[i])) / 4
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == F64 else dict(rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ad.hessian(lambda t: F.cross_entropy(t, labels))(x).numpy(), want, **tol)
    t = ad.tensor(x, requires_grad=True)
    F.cross_entropy(t, labels).backward(create_graph=True)
    v = rng.standard_normal((4, 3))
    g = t.grad
    t.grad = None
    (g * v.astype(dtype)).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), np.einsum("ijkl,ij->kl", want, v), **tol)
