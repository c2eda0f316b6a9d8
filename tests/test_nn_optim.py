"""nn and optim: module bookkeeping, a Linear + cross_entropy model's gradients, and optimizer
steps checked against NumPy re-implementations of the published update rules."""
import gc

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff import nn, optim
from pyautodiff.nn import functional as F
from pyautodiff.reference import REFERENCE


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---- Module bookkeeping ----

class Block(nn.Module):
    def __init__(self):
        self.scale = nn.Parameter([2.0])
        self.inner = nn.Linear(3, 2, seed=0)
        self.blocks = nn.ModuleList([nn.Linear(2, 2, seed=1), nn.Tanh(), nn.Linear(2, 1, bias=False, seed=2)])
        self.constant = ad.tensor([1.0])            # a plain tensor: not state
        self.offset = nn.Parameter([0.5])

    def forward(self, x):
        h = self.inner(x) * self.scale
        for m in self.blocks:
            h = m(h)
        return h + self.offset + self.constant


def test_named_parameters_order_own_first_then_children():
    names = [n for n, _ in Block().named_parameters()]
    assert names == ["scale", "offset", "inner.weight", "inner.bias", "blocks.0.weight",
                     "blocks.0.bias", "blocks.2.weight"]
    seq = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [p.shape for p in seq.parameters()] == [(3, 4), (3,), (2, 3), (2,)]


def test_shared_parameters_are_listed_once():
    lin = nn.Linear(2, 2)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]


def test_linear_shapes_init_and_formula():
    lin = nn.Linear(5, 3, seed=42)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (3,)
    k = 1 / np.sqrt(5)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    assert np.all(np.abs(w) <= k) and np.all(np.abs(b) <= k)
    np.testing.assert_array_equal(w, nn.Linear(5, 3, seed=42).weight.numpy())   # seeded
    x = _rng().standard_normal((4, 5))
    np.testing.assert_allclose(lin(x).numpy(), x @ w.T + b, rtol=1e-14)
    assert nn.Linear(5, 3, dtype=np.float32).weight.dtype == np.float32
    with pytest.raises(ValueError):
        nn.Linear(0, 3)


def test_state_dict_round_trip_in_place():
    a, b = Block(), Block()
    b.load_state_dict({k: v + 1 for k, v in a.state_dict().items()})
    opt = optim.SGD(b.parameters(), lr=0.1)
    held = list(b.parameters())
    sd = a.state_dict()
    assert list(sd) == [n for n, _ in a.named_parameters()]
    b.load_state_dict(sd)
    assert all(p is q for p, q in zip(held, b.parameters()))     # same tensors, new values
    x = _rng().standard_normal((2, 3))
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    sd["scale"][0] = 100.0                                        # a copy: the module is unaffected
    assert a.scale.item() == 2.0
    assert opt.params[0] is b.scale


def test_load_state_dict_errors_change_nothing():
    m = Block()
    before = m.state_dict()
    bad_shape = dict(before, **{"inner.weight": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="inner.weight"):
        m.load_state_dict(bad_shape)
    with pytest.raises(KeyError, match="offset"):
        m.load_state_dict({k: v for k, v in before.items() if k != "offset"})
    with pytest.raises(KeyError, match="extra"):
        m.load_state_dict(dict(before, extra=np.zeros(1)))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    missing, unexpected = m.load_state_dict(dict(before, extra=np.zeros(1)), strict=False)
    assert missing == [] and unexpected == ["extra"]


def test_zero_grad_and_call():
    m = Block()
    m(np.ones((2, 3))).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


# ---- functional ----

def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_linear_cross_entropy_gradients_match_reference_and_finite_differences():
    rng = _rng(3)
    x, y = rng.standard_normal((6, 4)), np.array([0, 2, 1, 2, 2, 0])
    lin = nn.Linear(4, 3, seed=5)
    loss = F.cross_entropy(lin(x), y)
    loss.backward()
    W, b = lin.weight.numpy(), lin.bias.numpy()
    # the reference's ops composed: z = x W^T + b, lp = log_softmax(z), loss = -mean(lp[i, y_i])
    z = x @ W.T + b
    lp = REFERENCE["log_softmax"].forward(z, axis=-1)
    np.testing.assert_allclose(loss.item(), -lp[np.arange(6), y].mean(), rtol=1e-14)
    g_lp = REFERENCE["getitem"].vjp(np.full(6, -1 / 6), None, lp, (np.arange(6), y))[0]
    (g_z,) = REFERENCE["log_softmax"].vjp(g_lp, lp, z, axis=-1)
    np.testing.assert_allclose(g_z, (_softmax(z) - np.eye(3)[y]) / 6, rtol=1e-12, atol=1e-15)
    # float64 throughout: agreement to ~1e-15 relative; 1e-12 leaves room for summation order
    np.testing.assert_allclose(lin.weight.grad.numpy(), g_z.T @ x, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(lin.bias.grad.numpy(), g_z.sum(0), rtol=1e-12, atol=1e-15)
    # and against central differences along random directions (ad.gradcheck's tolerances)
    assert ad.gradcheck(lambda W_, b_: F.cross_entropy(x @ W_.T + b_, y), (W, b), n_directions=16)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = ad.tensor([[1000.0, -1000.0, 0.0], [0.0, 0.0, 1e4]], requires_grad=True)
    loss = F.cross_entropy(logits, [1, 2])
    np.testing.assert_allclose(loss.item(), 1000.0)   # (2000 + 0) / 2
    loss.backward()
    np.testing.assert_allclose(logits.grad.numpy(), [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-12)


def test_cross_entropy_label_checks():
    logits = np.zeros((2, 3))
    with pytest.raises(IndexError, match="out of range"):
        F.cross_entropy(logits, [0, 3])
    with pytest.raises(IndexError):
        F.cross_entropy(logits, [-1, 0])
    with pytest.raises(ValueError, match=r"\(2,\)"):
        F.cross_entropy(logits, [0, 1, 2])
    with pytest.raises(TypeError, match="integer"):
        F.cross_entropy(logits, [0.5, 1.0])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        F.cross_entropy(np.zeros(3), [0])
    assert F.cross_entropy(logits, ad.tensor([0.0, 2.0])).item() == pytest.approx(np.log(3))


def test_mse_loss_and_activations():
    p = ad.tensor([1.0, 2.0, 4.0], requires_grad=True)
    loss = F.mse_loss(p, np.array([1.0, 0.0, 1.0]))
    assert loss.item() == pytest.approx(13 / 3)
    loss.backward()
    np.testing.assert_allclose(p.grad.numpy(), [0.0, 4 / 3, 2.0])
    with pytest.raises(ValueError, match="shape"):
        F.mse_loss(np.zeros((3, 1)), np.zeros(3))
    x = np.array([-1.0, 0.5])
    np.testing.assert_allclose(F.relu(x).numpy(), [0, 0.5])
    np.testing.assert_allclose(F.tanh(x).numpy(), np.tanh(x))
    np.testing.assert_allclose(F.sigmoid(x).numpy(), 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(F.softmax(x).numpy(), np.exp(x) / np.exp(x).sum())
    np.testing.assert_allclose(nn.Sigmoid()(x).numpy(), 1 / (1 + np.exp(-x)))


# ---- optimizers against the published rules ----

def _params_and_grads(dtype=np.float64, seed=0):
    rng = _rng(seed)
    thetas = [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(4).astype(dtype)]
    grads = [[rng.standard_normal(t.shape).astype(dtype) for t in thetas] for _ in range(3)]
    return thetas, grads


def _run_optimizer(opt_cls, thetas, grads, **kw):
    params = [ad.tensor(t, requires_grad=True) for t in thetas]
    opt = opt_cls(params, **kw)
    history = []
    for step_grads in grads:
        opt.zero_grad()
        for p, g in zip(params, step_grads):
            p.grad = g
        opt.step()
        history.append([p.numpy() for p in params])
    return history


def _sgd_rule(theta, grads, lr, momentum, weight_decay, dampening=0.0, nesterov=False):
    """torch.optim.SGD's documented algorithm."""
    out, b = [], None
    for g in grads:
        g = g + weight_decay * theta
        if momentum:
            b = g if b is None else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        theta = theta - lr * g
        out.append(theta)
    return out


def _adam_rule(theta, grads, lr, betas, eps, weight_decay, decoupled):
    """Kingma & Ba's Adam with torch.optim.Adam's L2 term, or AdamW's decoupled decay."""
    b1, b2 = betas
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            theta = theta - lr * weight_decay * theta
        else:
            g = g + weight_decay * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        theta = theta - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        out.append(theta)
    return out


def _compare(history, thetas, grads, rule, tol):
    for k, theta in enumerate(thetas):
        expected = rule(theta, [g[k] for g in grads])
        for step, e in enumerate(expected):
            got = history[step][k]
            assert got.dtype == theta.dtype
            np.testing.assert_allclose(got, e, rtol=tol, atol=tol)


# float64: same formulas, different association of a few products: agreement to ~1e-16; 1e-12 is
# the bound. float32 parameters update in float32: agreement to a few float32 ulps.
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.05, momentum=0.9, weight_decay=0.01),
                                dict(lr=0.05, momentum=0.8, dampening=0.1),
                                dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)])
def test_sgd_matches_published_rule(kw, dtype, tol):
    thetas, grads = _params_and_grads(dtype)
    history = _run_optimizer(optim.SGD, thetas, grads, **kw)
    _compare(history, thetas, grads, lambda th, gs: _sgd_rule(th, gs, kw["lr"], kw.get("momentum", 0.0),
                                                             kw.get("weight_decay", 0.0), kw.get("dampening", 0.0),
                                                             kw.get("nesterov", False)), tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("cls,decoupled,kw", [
    (optim.Adam, False, dict(lr=1e-3)),
    (optim.Adam, False, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    (optim.AdamW, True, dict(lr=0.01)),                              # default weight_decay 1e-2
    (optim.AdamW, True, dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.3)),
])
def test_adam_and_adamw_match_published_rule(cls, decoupled, kw, dtype, tol):
    thetas, grads = _params_and_grads(dtype, seed=1)
    history = _run_optimizer(cls, thetas, grads, **kw)
    full = dict(lr=kw["lr"], betas=kw.get("betas", (0.9, 0.999)), eps=kw.get("eps", 1e-8),
                weight_decay=kw.get("weight_decay", 1e-2 if decoupled else 0.0))
    _compare(history, thetas, grads, lambda th, gs: _adam_rule(th, gs, decoupled=decoupled, **full), tol)


def _adam_amsgrad_rule(theta, grads, lr, betas, eps, weight_decay):
    """torch.optim.Adam's documented algorithm with amsgrad=True."""
    b1, b2 = betas
    m = v = vmax = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        vmax = np.maximum(vmax, v)
        theta = theta - lr * (m / (1 - b1 ** t)) / (np.sqrt(vmax / (1 - b2 ** t)) + eps)
        out.append(theta)
    return out


def _rmsprop_rule(theta, grads, lr, alpha, eps, weight_decay, momentum, centered):
    """torch.optim.RMSprop's documented algorithm."""
    v = a = b = 0.0
    out = []
    for g in grads:
        g = g + weight_decay * theta
        v = alpha * v + (1 - alpha) * g ** 2
        var = v
        if centered:
            a = alpha * a + (1 - alpha) * g
            var = v - a ** 2
        step = g / (np.sqrt(var) + eps)
        if momentum:
            b = momentum * b + step
            step = b
        theta = theta - lr * step
        out.append(theta)
    return out


def _adagrad_rule(theta, grads, lr, lr_decay, weight_decay, initial_accumulator_value, eps):
    """torch.optim.Adagrad's documented algorithm."""
    s = initial_accumulator_value
    out = []
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * theta
        s = s + g ** 2
        theta = theta - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(s) + eps)
        out.append(theta)
    return out


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("cls,kw,rule", [
    (optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True), _adam_amsgrad_rule),
    (optim.RMSprop, dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False), _rmsprop_rule),
    (optim.RMSprop, dict(lr=0.02, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.8, centered=True), _rmsprop_rule),
    (optim.Adagrad, dict(lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10),
     _adagrad_rule),
    (optim.Adagrad, dict(lr=0.1, lr_decay=0.5, weight_decay=0.2, initial_accumulator_value=0.3, eps=1e-6),
     _adagrad_rule),
])
def test_amsgrad_rmsprop_adagrad_match_published_rules(cls, kw, rule, dtype, tol):
    thetas, grads = _params_and_grads(dtype, seed=2)
    history = _run_optimizer(cls, thetas, grads, **kw)
    args = {k: v for k, v in kw.items() if k != "amsgrad"}
    _compare(history, thetas, grads, lambda th, gs: rule(th, gs, **args), tol)


def test_parameter_groups_have_their_own_hyperparameters():
    a, b = ad.tensor([1.0], requires_grad=True), ad.tensor([1.0], requires_grad=True)
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5] and opt.param_groups[0]["momentum"] == 0.0
    for _ in range(2):
        a.grad, b.grad = [1.0], [1.0]
        opt.step()
    assert a.item() == pytest.approx(1.0 - 0.1 - 0.1)
    assert b.item() == pytest.approx(1.0 - 0.5 - 0.5 * (0.9 + 1.0))   # b: 1, then 0.9*1 + 1
    c = ad.tensor([0.0], requires_grad=True)
    opt.add_param_group({"params": [c], "lr": 2.0})
    assert opt.param_groups[2]["momentum"] == 0.0 and opt.params == [a, b, c]
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([a, a], lr=0.1)                        # the case: stepped twice before
    with pytest.raises(ValueError, match="learning rate"):
        opt.add_param_group({"params": [ad.tensor([0.0], requires_grad=True)], "lr": -1.0})
    with pytest.raises(AttributeError, match="param_groups"):
        opt.lr = 0.3                                     # would change nothing: an error
    assert len(opt.param_groups) == 3


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True),
    lambda ps: optim.AdamW(ps, lr=0.01),
    lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
    lambda ps: optim.Adagrad(ps, lr=0.1, lr_decay=0.01),
])
def test_resumed_optimizer_is_bit_identical(make, tmp_path):
    thetas, grads = _params_and_grads(np.float32, seed=3)
    grads = grads * 3                                    # 9 steps

    def run(n_steps, params, opt):
        for step_grads in grads[:n_steps]:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()

    straight = [ad.tensor(t, requires_grad=True) for t in thetas]
    run(9, straight, make(straight))
    first = [ad.tensor(t, requires_grad=True) for t in thetas]
    opt = make(first)
    run(4, first, opt)
    ad.save({"params": first, "opt": opt.state_dict()}, tmp_path / "ckpt")
    saved = ad.load(tmp_path / "ckpt")
    resumed = [ad.tensor(p.numpy(), requires_grad=True) for p in saved["params"]]
    opt2 = make(resumed)
    opt2.load_state_dict(saved["opt"])
    for step_grads in grads[4:]:
        for p, g in zip(resumed, step_grads):
            p.grad = g
        opt2.step()
    for p, q in zip(straight, resumed):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_optimizer_load_state_dict_checks_before_changing():
    p = ad.tensor(np.ones(3), requires_grad=True)
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.ones(3)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0] and sd["state"][0]["step"] == 1
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    other = optim.Adam([ad.tensor(np.ones(2), requires_grad=True)], lr=0.5)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.5 and other.state == {}
    with pytest.raises(ValueError, match="2 parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": sd["param_groups"] * 2})
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict({"state": {}, "param_groups": [dict(sd["param_groups"][0], lr=-1.0)]})
    with pytest.raises(ValueError):
        opt.load_state_dict({"state": {5: {}}, "param_groups": sd["param_groups"]})


def test_step_records_nothing_and_allocates_no_graph():
    params = [ad.tensor(np.ones((3, 3)), requires_grad=True), ad.tensor(np.ones(3), requires_grad=True)]
    for p in params:
        p.grad = np.full(p.shape, 0.5)
    for opt, n_state in ((optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1), 1),
                         (optim.Adam(params), 2), (optim.AdamW(params), 2), (optim.SGD(params, lr=0.1), 0)):
        gc.collect()     # no earlier test's cycles may be collected between the counts
        before = ad.tape_stats()
        opt.step()       # the first step creates the state buffers, once
        assert ad.tape_stats()["live_nodes"] == before["live_nodes"] + n_state * len(params)
        before = ad.tape_stats()
        for _ in range(5):
            opt.step()
        assert ad.tape_stats()["live_nodes"] == before["live_nodes"]
        assert all(p.is_leaf and p.requires_grad for p in params)
        np.testing.assert_array_equal(params[0].grad.numpy(), np.full((3, 3), 0.5))   # grads untouched


def test_step_skips_parameters_without_grad():
    a, b = ad.tensor([1.0], requires_grad=True), ad.tensor([1.0], requires_grad=True)
    opt = optim.SGD([a, b], lr=1.0)
    a.grad = [2.0]
    opt.step()
    assert a.item() == -1.0 and b.item() == 1.0


def test_optimizer_argument_errors():
    p = ad.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    optim.Adam([ad.tensor([1.0])])          # a frozen leaf is accepted, as PyTorch (it never has a grad)
    with pytest.raises(ValueError, match="leaf"):
        optim.Adam([p * 2])
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="beta"):
        optim.Adam([p], betas=(1.0, 0.9))


def test_in_place_updates_refuse_computed_tensors():
    from pyautodiff.tensor import _assign
    from pyautodiff._capi import ffi, lib
    x = ad.tensor([1.0], requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="leaf"):
        _assign(y, [3.0])
    with pytest.raises(ValueError, match="shape"):
        _assign(x, [1.0, 2.0])
    o = ffi.new("ad_optim_t *", {"kind": lib.AD_OPTIM_ADAM, "lr": 0.1, "beta1": 0.9, "beta2": 0.99})
    x.grad = [1.0]
    m, v = ad.zeros_like(x), ad.zeros(2)
    assert lib.ad_optim_step(o, y._h, m._h, m._h, 0, 1) != 0        # not a leaf
    assert lib.ad_optim_step(o, x._h, m._h, v._h, 0, 1) != 0        # state of the wrong shape
    assert lib.ad_optim_step(o, x._h, m._h, m._h, 0, 1) != 0        # the two moments aliased
    assert lib.ad_optim_step(o, x._h, m._h, x._h, 0, 1) != 0        # the parameter as its own state
    assert lib.ad_optim_step(o, x._h, m._h, 0, 0, 1) != 0            # no second moment
    assert x.item() == 1.0                                        # nothing was changed


# ---- training ----

def test_training_runs_in_flat_memory_and_learns():
    rng = _rng(0)
    x = rng.standard_normal((64, 5))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(5, 16, seed=1), nn.Tanh(), nn.Linear(16, 2, seed=2))
    opt = optim.Adam(model.parameters(), lr=0.02)
    live = []
    for step in range(200):
        batch = rng.integers(0, 64, 16)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        live.append(ad.tape_stats()["live_nodes"])
    assert live[10] == live[-1] and max(live[10:]) == min(live[10:])
    with ad.no_grad():
        accuracy = (model(x).numpy().argmax(1) == y).mean()
    assert accuracy > 0.9
