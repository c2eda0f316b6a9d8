"""Normalization, embedding, dropout, one_hot (nn/_layers.py), the modules of nn/layers.py and the
initialisers of nn.init: NumPy formulas, finite-difference gradients in float64, float32 forward,
batch norm's running statistics over several steps against the NumPy recurrence, dropout's mask
from its seed with the gradient masked identically, and state dicts with PyTorch's keys and
shapes (against PyTorch itself when it is importable; against PyTorch's documented layouts always)."""
import math

import numpy as np
import pytest

import pyautodiff as ad
import pyautodiff.nn as nn
import pyautodiff.nn.functional as F

F32, F64 = np.float32, np.float64


def _norm(x, axes, eps):
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(v + eps)


def test_layer_norm():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    want = _norm(x, (1, 2), 1e-5) * w + b
    np.testing.assert_allclose(F.layer_norm(x, (4, 5), w, b).numpy(), want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(F.layer_norm(x, 5).numpy(), _norm(x, 2, 1e-5), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(F.layer_norm(x.astype(F32), (4, 5), w.astype(F32), b.astype(F32)).numpy(), want,
                               rtol=1e-5, atol=1e-5)
    assert ad.gradcheck(lambda x, w, b: F.layer_norm(x, (4, 5), w, b, eps=1e-3), (x, w, b))
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(4,\) must be the trailing"):
        F.layer_norm(x, 4)
    with pytest.raises(ValueError, match=r"layer_norm: weight must have shape \(5,\)"):
        F.layer_norm(x, 5, np.ones(4))


def test_group_norm():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 6, 3, 2)), rng.standard_normal(6), rng.standard_normal(6)
    want = _norm(x.reshape(2, 3, -1), 2, 1e-5).reshape(x.shape) * w[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(F.group_norm(x, 3, w, b).numpy(), want, rtol=1e-12, atol=1e-13)
    assert ad.gradcheck(lambda x, w, b: F.group_norm(x, 2, w, b), (x, w, b))
    with pytest.raises(ValueError, match="group_norm: .*num_groups=4"):
        F.group_norm(x, 4)


@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 4), (4, 3, 2, 3)])
def test_batch_norm_training_and_eval(shape):
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal(shape), rng.standard_normal(3), rng.standard_normal(3)
    axes = (0,) + tuple(range(2, len(shape)))
    view = (1, 3) + (1,) * (len(shape) - 2)
    want = _norm(x, axes, 1e-5) * w.reshape(view) + b.reshape(view)
    np.testing.assert_allclose(F.batch_norm(x, None, None, w, b, training=True).numpy(), want, rtol=1e-12, atol=1e-13)
    assert ad.gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (x, w, b))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    want = (x - rm.reshape(view)) / np.sqrt(rv.reshape(view) + 1e-5) * w.reshape(view) + b.reshape(view)
    got = F.batch_norm(x, ad.tensor(rm), ad.tensor(rv), w, b, training=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-13)
    assert ad.gradcheck(lambda x, w: F.batch_norm(x, ad.tensor(rm), ad.tensor(rv), w, training=False), (x, w))


def test_batch_norm_running_statistics_follow_the_recurrence():
    # PyTorch's rule: running = (1 - m) running + m stat, with the unbiased variance
    rng = np.random.default_rng(3)
    layer = nn.BatchNorm2d(3, momentum=0.3)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(5):
        x = rng.standard_normal((4, 3, 2, 5)) * (step + 1) + step
        layer(x)
        n = x.size // 3
        rm = 0.7 * rm + 0.3 * x.mean(axis=(0, 2, 3))
        rv = 0.7 * rv + 0.3 * x.var(axis=(0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(layer.running_mean.numpy(), rm, rtol=1e-13)
    np.testing.assert_allclose(layer.running_var.numpy(), rv, rtol=1e-13)
    assert layer.num_batches_tracked.item() == 5
    # eval() reaches the layer through a container, and then the running statistics are used
    model = nn.Sequential(layer)
    model.eval()
    x = rng.standard_normal((2, 3, 2, 2))
    np.testing.assert_allclose(model(x).numpy(), (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5),
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(layer.running_mean.numpy(), rm, rtol=1e-13)   # unchanged in eval


def test_batch_norm_momentum_none_is_the_cumulative_average():
    rng = np.random.default_rng(4)
    layer = nn.BatchNorm1d(2, momentum=None)
    xs = [rng.standard_normal((6, 2)) for _ in range(3)]
    for x in xs:
        layer(x)
    np.testing.assert_allclose(layer.running_mean.numpy(), np.mean([x.mean(0) for x in xs], axis=0), rtol=1e-13)


def test_batch_norm_without_running_stats_uses_the_batch_in_eval():
    layer = nn.BatchNorm1d(2, track_running_stats=False).eval()
    x = np.random.default_rng(5).standard_normal((5, 2))
    np.testing.assert_allclose(layer(x).numpy(), _norm(x, 0, 1e-5), rtol=1e-12)
    assert "running_mean" not in layer.state_dict()


def test_batch_norm_errors():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(np.zeros((1, 3)), None, None, training=True)
    with pytest.raises(ValueError, match="needs running_mean"):
        F.batch_norm(np.zeros((2, 3)), None, None, training=False)
    with pytest.raises(ValueError, match=r"running_mean must be a Tensor of shape \(3,\)"):
        F.batch_norm(np.zeros((2, 3)), ad.zeros(2), ad.ones(3), training=True)
    with pytest.raises(ValueError, match="BatchNorm2d: expected a 4-D input"):
        nn.BatchNorm2d(3)(np.zeros((2, 3)))


def test_embedding_gathers_rows_and_scatters_gradients():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((5, 3))
    idx = np.array([[0, 4, 4], [2, 0, 1]])
    np.testing.assert_array_equal(F.embedding(idx, w).numpy(), w[idx])
    wt = ad.tensor(w, requires_grad=True)
    g = rng.standard_normal((2, 3, 3))
    (F.embedding(idx, wt) * g).sum().backward()
    want = np.zeros_like(w)
    np.add.at(want, idx, g)                 # repeated indices accumulate
    np.testing.assert_allclose(wt.grad.numpy(), want, rtol=1e-15)
    # padding_idx: the row's value is returned but it gets no gradient
    wt = ad.tensor(w, requires_grad=True)
    out = F.embedding(idx, wt, padding_idx=4)
    np.testing.assert_array_equal(out.numpy(), w[idx])
    (out * g).sum().backward()
    want[4] = 0
    np.testing.assert_allclose(wt.grad.numpy(), want, rtol=1e-15)
    # (no finite differences with padding_idx: by design its row's value moves but passes no gradient)
    assert ad.gradcheck(lambda w: F.embedding(idx, w), (w,))
    np.testing.assert_array_equal(F.embedding(idx, w.astype(F32)).numpy(), w.astype(F32)[idx])
    with pytest.raises(IndexError, match="embedding: index 5 is out of range for 5 entries"):
        F.embedding([5], w)
    with pytest.raises(TypeError, match="embedding: indices must be integers"):
        F.embedding([0.5], w)


def test_dropout_mask_comes_from_the_seed_and_masks_the_gradient():
    x = np.random.default_rng(7).standard_normal((40, 30))
    p = 0.3
    keep = np.random.default_rng(11).random(x.shape) >= p
    xt = ad.tensor(x, requires_grad=True)
    y = F.dropout(xt, p, training=True, generator=np.random.default_rng(11))
    np.testing.assert_allclose(y.numpy(), x * keep / (1 - p), rtol=1e-15)
    g = np.random.default_rng(8).standard_normal(x.shape)
    (y * g).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), g * keep / (1 - p), rtol=1e-15)
    # the global generator: ad.manual_seed reproduces the mask
    ad.manual_seed(5)
    a = F.dropout(x, p).numpy()
    ad.manual_seed(5)
    np.testing.assert_array_equal(F.dropout(x, p).numpy(), a)
    np.testing.assert_array_equal(a != 0, np.random.default_rng(5).random(x.shape) >= p)
    # identity in eval mode, through a container's eval(); own generator from a seed
    layer = nn.Dropout(p, seed=3)
    model = nn.Sequential(layer)
    np.testing.assert_array_equal(model(x).numpy() != 0, np.random.default_rng(3).random(x.shape) >= p)
    model.eval()
    np.testing.assert_array_equal(model(x).numpy(), x)
    assert F.dropout(x.astype(F32), p).dtype == F32
    np.testing.assert_array_equal(F.dropout(x, 1.0).numpy(), np.zeros_like(x))
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\]"):
        F.dropout(x, 1.5)


def test_one_hot():
    got = F.one_hot(np.array([[0, 2], [1, 0]]), 3)
    np.testing.assert_array_equal(got.numpy(), np.eye(3)[[[0, 2], [1, 0]]])
    assert F.one_hot([3, 1]).shape == (2, 4)
    assert F.one_hot([1], 2, dtype=F32).dtype == F32
    with pytest.raises(IndexError, match="one_hot: class 3 is out of range for num_classes=3"):
        F.one_hot([3], 3)


# ---- modules ----

def test_activation_modules_are_their_functions():
    x = np.linspace(-30, 30, 13)
    np.testing.assert_allclose(nn.GELU()(x).numpy(), ad.gelu(x).numpy())
    np.testing.assert_allclose(nn.GELU("tanh")(x).numpy(), ad.gelu(x, approximate="tanh").numpy())
    np.testing.assert_allclose(nn.SiLU()(x).numpy(), x / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(nn.LeakyReLU(0.2)(x).numpy(), np.where(x > 0, x, 0.2 * x))
    np.testing.assert_allclose(nn.ELU(0.5)(x).numpy(), np.where(x > 0, x, 0.5 * np.expm1(x)), rtol=1e-14)
    np.testing.assert_allclose(nn.Hardtanh(-2, 3)(x).numpy(), np.clip(x, -2, 3))
    np.testing.assert_allclose(nn.Softplus(beta=2, threshold=10)(x).numpy(),
                               np.where(2 * x > 10, x, np.logaddexp(0, 2 * x) / 2), rtol=1e-14)
    np.testing.assert_allclose(nn.Sigmoid()(x).numpy(), 1 / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_array_equal(nn.Identity(3, k=1)(x), x)
    np.testing.assert_array_equal(nn.Flatten()(np.zeros((2, 3, 4))).shape, (2, 12))
    np.testing.assert_array_equal(nn.Flatten(0, 1)(np.zeros((2, 3, 4))).shape, (6, 4))
    for bad in (np.zeros(3), np.zeros(())):
        with pytest.raises(ValueError, match="Flatten: start_dim 1 and end_dim -1 do not fit"):
            nn.Flatten()(bad)


def test_loss_modules_are_their_functions():
    rng = np.random.default_rng(9)
    x, t, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), np.array([0, 2, 1, 2])
    w = rng.uniform(0.5, 2, 3)
    for module, fn in [(nn.CrossEntropyLoss(weight=w, label_smoothing=0.1),
                        lambda: F.cross_entropy(x, y, weight=w, label_smoothing=0.1)),
                       (nn.NLLLoss(ignore_index=1, reduction="sum"),
                        lambda: F.nll_loss(x, y, ignore_index=1, reduction="sum"))]:
        np.testing.assert_allclose(module(x, y).numpy(), fn().numpy(), rtol=1e-15)
    p = 1 / (1 + np.exp(-x))
    tb = (t > 0).astype(float)
    for module, fn in [(nn.MSELoss(), F.mse_loss), (nn.L1Loss(reduction="sum"), lambda a, b: F.l1_loss(a, b, reduction="sum")),
                       (nn.HuberLoss(delta=0.5), lambda a, b: F.huber_loss(a, b, delta=0.5)),
                       (nn.SmoothL1Loss(beta=0.5), lambda a, b: F.smooth_l1_loss(a, b, beta=0.5)),
                       (nn.BCEWithLogitsLoss(pos_weight=w), lambda a, b: F.binary_cross_entropy_with_logits(
                           a, b, pos_weight=w)),
                       (nn.KLDivLoss(reduction="batchmean", log_target=True),
                        lambda a, b: F.kl_div(a, b, reduction="batchmean", log_target=True))]:
        np.testing.assert_allclose(module(x, tb).numpy(), fn(x, tb).numpy(), rtol=1e-15)
    np.testing.assert_allclose(nn.BCELoss()(p, tb).numpy(), F.binary_cross_entropy(p, tb).numpy(), rtol=1e-15)


def test_conv_modules_initialise_as_pytorch():
    conv = nn.Conv2d(4, 6, (3, 2), groups=2, seed=0)
    assert conv.weight.shape == (6, 2, 3, 2) and conv.bias.shape == (6,)
    k = 1 / math.sqrt(2 * 3 * 2)          # kaiming_uniform_(a=sqrt(5)): 1 / sqrt(fan_in)
    assert np.abs(conv.weight.numpy()).max() <= k and np.abs(conv.weight.numpy()).max() > 0.8 * k
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 6))
    np.testing.assert_allclose(conv(x).numpy(), F.conv2d(x, conv.weight, conv.bias, groups=2).numpy())
    tconv = nn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=1, groups=2, seed=1)
    assert tconv.weight.shape == (4, 3, 3, 3)
    assert tconv(x).shape == (2, 6, 12, 14)
    assert nn.Conv1d(3, 5, 4, dtype=F32)(np.zeros((2, 3, 9), F32)).shape == (2, 5, 6)
    assert nn.Conv2d(3, 5, 3, seed=7).weight.numpy().tolist() == nn.Conv2d(3, 5, 3, seed=7).weight.numpy().tolist()
    with pytest.raises(ValueError, match="Conv2d: in_channels .* divisible by groups"):
        nn.Conv2d(3, 6, 3, groups=2)


# the state-dict layout of each module in PyTorch's documentation
PYTORCH_LAYOUTS = [
    (lambda: nn.Conv1d(3, 4, 5), {"weight": (4, 3, 5), "bias": (4,)}),
    (lambda: nn.Conv2d(4, 6, (3, 2), groups=2, bias=False), {"weight": (6, 2, 3, 2)}),
    (lambda: nn.ConvTranspose2d(4, 6, 3, groups=2), {"weight": (4, 3, 3, 3), "bias": (6,)}),
    (lambda: nn.LayerNorm((3, 4)), {"weight": (3, 4), "bias": (3, 4)}),
    (lambda: nn.BatchNorm1d(5), {"weight": (5,), "bias": (5,), "running_mean": (5,), "running_var": (5,),
                                 "num_batches_tracked": ()}),
    (lambda: nn.BatchNorm2d(3, affine=False), {"running_mean": (3,), "running_var": (3,), "num_batches_tracked": ()}),
    (lambda: nn.GroupNorm(2, 6), {"weight": (6,), "bias": (6,)}),
    (lambda: nn.Embedding(10, 3, padding_idx=2), {"weight": (10, 3)}),
    (lambda: nn.CrossEntropyLoss(weight=np.ones(3)), {"weight": (3,)}),
    (lambda: nn.BCEWithLogitsLoss(pos_weight=np.ones(2)), {"pos_weight": (2,)}),
    (lambda: nn.Dropout(0.2), {}), (lambda: nn.MaxPool2d(2), {}), (lambda: nn.Flatten(), {}),
]


@pytest.mark.parametrize("make,layout", PYTORCH_LAYOUTS)
def test_state_dict_layout(make, layout):
    assert {k: v.shape for k, v in make().state_dict().items()} == layout


def test_state_dicts_match_pytorch_when_it_is_importable():
    torch = pytest.importorskip("torch")     # optional: the layouts above are checked without it
    tnn = torch.nn
    pairs = [(nn.Conv1d(3, 4, 5), tnn.Conv1d(3, 4, 5)), (nn.Conv2d(4, 6, (3, 2), groups=2), tnn.Conv2d(4, 6, (3, 2), groups=2)),
             (nn.ConvTranspose2d(4, 6, 3, groups=2), tnn.ConvTranspose2d(4, 6, 3, groups=2)),
             (nn.LayerNorm((3, 4)), tnn.LayerNorm((3, 4))), (nn.BatchNorm1d(5), tnn.BatchNorm1d(5)),
             (nn.BatchNorm2d(3), tnn.BatchNorm2d(3)), (nn.GroupNorm(2, 6), tnn.GroupNorm(2, 6)),
             (nn.Embedding(10, 3), tnn.Embedding(10, 3))]
    for ours, theirs in pairs:
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in theirs.state_dict().items()}, type(ours).__name__


def test_init_functions():
    g = np.random.default_rng
    w = ad.zeros((30, 20, 3, 3))
    fan_in, fan_out = 20 * 9, 30 * 9
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g(0))
    # bound 1 / sqrt(fan_in), computed through the gain: equal up to rounding of the bound
    np.testing.assert_allclose(w.numpy(), g(0).uniform(-1, 1, w.shape) / math.sqrt(fan_in), rtol=1e-12, atol=1e-16)
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=g(1))
    np.testing.assert_allclose(w.numpy(), g(1).normal(0, math.sqrt(2 / fan_out), w.shape), rtol=1e-12)
    nn.init.xavier_uniform_(w, gain=2.0, generator=g(2))
    a = 2 * math.sqrt(6 / (fan_in + fan_out))
    np.testing.assert_allclose(w.numpy(), g(2).uniform(-a, a, w.shape), rtol=1e-12)
    nn.init.xavier_normal_(w, generator=g(3))
    np.testing.assert_allclose(w.numpy(), g(3).normal(0, math.sqrt(2 / (fan_in + fan_out)), w.shape), rtol=1e-12)
    v = ad.zeros((4, 5), dtype=F32)
    assert nn.init.uniform_(v, -2, 3, generator=g(4)) is v and v.dtype == F32
    np.testing.assert_array_equal(v.numpy(), g(4).uniform(-2, 3, (4, 5)).astype(F32))
    nn.init.normal_(v, 1, 2, generator=g(5))
    np.testing.assert_array_equal(v.numpy(), g(5).normal(1, 2, (4, 5)).astype(F32))
    np.testing.assert_array_equal(nn.init.constant_(v, 0.5).numpy(), np.full((4, 5), 0.5))
    np.testing.assert_array_equal(nn.init.zeros_(v).numpy(), 0)
    np.testing.assert_array_equal(nn.init.ones_(v).numpy(), 1)
    assert nn.init.calculate_gain("tanh") == 5 / 3
    with pytest.raises(ValueError, match="xavier_uniform_: fan in and fan out need"):
        nn.init.xavier_uniform_(ad.zeros(3))
    # initialising a parameter in place keeps it a trainable leaf
    p = nn.Conv2d(2, 3, 3).weight
    nn.init.zeros_(p)
    assert p.requires_grad and np.all(p.numpy() == 0)
