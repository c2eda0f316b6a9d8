"""ad.record_step: a traced training step equals the eager loop (zero_grad, loss, backward,
optimizer.step) bit for bit, and keeps the Python optimizer's state consistent."""
import copy

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff import nn, optim
import pyautodiff.nn.functional as F

OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.05),
    "sgd-momentum-dampening-wd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    "sgd-nesterov-wd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02),
    "adam": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1),
    "adam-amsgrad": lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.05),
    "rmsprop-centered-momentum": lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=0.1, lr_decay=0.01, weight_decay=0.01),
}


def _model(dtype, seed=0):
    return nn.Sequential(nn.Linear(3, 8, seed=seed, dtype=dtype), nn.Tanh(), nn.Linear(8, 2, seed=seed + 1, dtype=dtype))


def _batches(dtype, n=6):
    rng = np.random.default_rng(5)
    return [(rng.normal(size=(10, 3)).astype(dtype), rng.normal(size=(10, 2)).astype(dtype)) for _ in range(n)]


def _bits(t):
    return None if t is None else t.numpy().tobytes()


def _same_state(o1, o2):
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys()
    for k in s1["state"]:
        a, b = s1["state"][k], s2["state"][k]
        assert a.keys() == b.keys()
        for name in a:
            if name == "step":
                assert a[name] == b[name]
            else:
                assert _bits(a[name]) == _bits(b[name]), name


def _same_params(m1, m2):
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert _bits(p) == _bits(q)
        assert _bits(p.grad) == _bits(q.grad)


def _eager_step(model, opt, x, y):
    opt.zero_grad()
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_traced_loop_equals_eager_loop_bit_for_bit(name, dtype):
    m1 = _model(dtype)
    m2 = copy.deepcopy(m1)
    o1, o2 = OPTIMIZERS[name](m1.parameters()), OPTIMIZERS[name](m2.parameters())
    sch1 = optim.lr_scheduler.StepLR(o1, step_size=2, gamma=0.5)
    sch2 = optim.lr_scheduler.StepLR(o2, step_size=2, gamma=0.5)
    batches = _batches(dtype)
    step = ad.record_step(lambda x, y: F.mse_loss(m2(x), y), o2, *batches[0])
    _same_params(m1, m2)                       # recording changes nothing
    for x, y in batches:
        l1 = _eager_step(m1, o1, x, y)
        l2 = step(x, y)
        assert l2.dtype == dtype and not l2.requires_grad
        assert _bits(l1) == _bits(l2)
        _same_params(m1, m2)
        sch1.step()
        sch2.step()
    assert o2.param_groups[0]["lr"] != OPTIMIZERS[name]([ad.tensor(1.0)]).param_groups[0]["lr"]  # the schedule moved
    _same_state(o1, o2)
    assert step.records == 1


def test_traced_and_eager_steps_alternate_and_state_dict_round_trips():
    m1, dtype = _model(np.float64), np.float64
    m2 = copy.deepcopy(m1)
    o1 = optim.Adam(m1.parameters(), lr=0.01)
    o2 = optim.Adam(m2.parameters(), lr=0.01)
    loss2 = lambda x, y: F.mse_loss(m2(x), y)   # noqa: E731
    batches = _batches(dtype, 8)
    step = ad.record_step(loss2, o2, *batches[0])
    for i, (x, y) in enumerate(batches):
        _eager_step(m1, o1, x, y)
        if i % 3 == 1:
            _eager_step(m2, o2, x, y)             # an eager step in between
        else:
            step(x, y)
        if i == 4:                                # a restore replaces the state tensors
            saved = o2.state_dict()
            o2.load_state_dict(saved)
        if i == 6:                                # so does a hand edit of one buffer
            for o, m in ((o1, m1), (o2, m2)):
                st = o.state[m[0].weight]
                st["exp_avg"] = ad.tensor(st["exp_avg"].numpy() * 0.5)
        _same_params(m1, m2)
    _same_state(o1, o2)


def test_parameter_groups_and_unreached_parameters_behave_as_eager():
    dtype = np.float32
    m1 = _model(dtype)
    extra1 = ad.tensor(np.ones(3, dtype), requires_grad=True)   # in the optimizer, not in the loss
    m2 = copy.deepcopy(m1)
    extra2 = ad.tensor(np.ones(3, dtype), requires_grad=True)
    ps1, ps2 = list(m1.parameters()), list(m2.parameters())

    def groups(ps, extra):
        return [{"params": ps[:2], "lr": 0.1}, {"params": ps[2:] + [extra], "momentum": 0.9}]

    o1, o2 = optim.SGD(groups(ps1, extra1), lr=0.01), optim.SGD(groups(ps2, extra2), lr=0.01)
    batches = _batches(dtype, 4)
    step = ad.record_step(lambda x, y: F.mse_loss(m2(x), y), o2, *batches[0])
    for x, y in batches:
        _eager_step(m1, o1, x, y)
        step(x, y)
        _same_params(m1, m2)
        assert extra2.grad is None and _bits(extra2) == _bits(extra1)
    _same_state(o1, o2)
    assert all(p not in o2.state for p in [extra2])


def _recorded(make_optimizer):
    """(model, optimizer, a batch, its recorded step), after one step."""
    m = _model(np.float64)
    o = make_optimizer(m.parameters())
    x, y = _batches(np.float64, 1)[0]
    step = ad.record_step(lambda x, y: F.mse_loss(m(x), y), o, x, y)
    step(x, y)
    return m, o, (x, y), step


def test_a_grad_the_caller_holds_is_not_overwritten():
    m, o, (x, y), step = _recorded(lambda ps: optim.SGD(ps, lr=0.1))
    held = m[0].weight.grad
    before = _bits(held)
    step(x + 1, y)
    assert _bits(held) == before                 # a new grad replaced it
    assert _bits(m[0].weight.grad) != before


def test_frozen_parameters_are_constants_and_their_change_records_again():
    m1 = _model(np.float64)
    m2 = copy.deepcopy(m1)
    for m in (m1, m2):
        m[0].weight.requires_grad = False
    o1 = optim.SGD([p for p in m1.parameters() if p.requires_grad], lr=0.1)
    o2 = optim.SGD([p for p in m2.parameters() if p.requires_grad], lr=0.1)
    batches = _batches(np.float64, 3)
    step = ad.record_step(lambda x, y: F.mse_loss(m2(x), y), o2, *batches[0])
    for i, (x, y) in enumerate(batches):
        if i == 2:
            for m in (m1, m2):
                with ad.no_grad():
                    m[0].weight.copy_(m[0].weight * 0.5)
        _eager_step(m1, o1, x, y)
        step(x, y)
        _same_params(m1, m2)
    assert step.records == 2


def test_guards_follow_the_branch():
    m1 = _model(np.float64)
    m2 = copy.deepcopy(m1)

    def make_loss(m):
        def loss(x, y):
            out = m(x)
            if x.sum().item() > 0:               # a branch on a traced value: a guard
                return F.mse_loss(out, y)
            return F.mse_loss(out * 2.0, y)
        return loss

    o1, o2 = optim.SGD(m1.parameters(), lr=0.01), optim.SGD(m2.parameters(), lr=0.01)
    l1, l2 = make_loss(m1), make_loss(m2)
    x, y = _batches(np.float64, 1)[0]
    x = x - x.mean() + 0.5
    batches = [(x * s, y) for s in (1.0, -1.0, 1.0, -1.0)]
    step = ad.record_step(l2, o2, *batches[0])
    for x, y in batches:
        o1.zero_grad()
        loss = l1(x, y)
        loss.backward()
        o1.step()
        assert _bits(step(x, y)) == _bits(loss)
        _same_params(m1, m2)
    assert step.records == 4                     # each flip records again
    strict = ad.record_step(l2, o2, *batches[0], on_guard="raise")
    before = [_bits(p) for p in m2.parameters()]
    with pytest.raises(ad.GuardError):
        strict(*batches[1])                      # the other sign: the other branch
    assert [_bits(p) for p in m2.parameters()] == before     # a failed guard changes nothing


def test_static_arguments_and_new_shapes_record_again():
    m = _model(np.float64)
    o = optim.SGD(m.parameters(), lr=0.01)
    x, y = _batches(np.float64, 1)[0]
    step = ad.record_step(lambda x, y, scale: F.mse_loss(m(x) * scale, y), o, x, y, 2.0)
    step(x, y, 2.0)
    assert step.records == 1
    step(x, y, 3.0)                              # a number is static
    step(x[:4], y[:4], 3.0)                      # a new shape
    assert step.records == 3


def test_unsupported_combinations_raise():
    m = _model(np.float64)
    x, y = _batches(np.float64, 1)[0]

    class MySGD(optim.SGD):
        def step(self, closure=None):
            return super().step(closure)

    with pytest.raises(TypeError, match="MySGD has no C update"):
        ad.record_step(lambda x, y: F.mse_loss(m(x), y), MySGD(m.parameters(), lr=0.1), x, y)
    with pytest.raises(TypeError, match="optimizer"):
        ad.record_step(lambda x, y: F.mse_loss(m(x), y), object(), x, y)
    outside = ad.tensor(1.0, requires_grad=True)
    o = optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not in the optimizer"):
        ad.record_step(lambda x, y: F.mse_loss(m(x), y) * outside, o, x, y)
    with pytest.raises(ValueError, match="scalar loss"):
        ad.record_step(lambda x, y: m(x) - y, o, x, y)
    with pytest.raises(RuntimeError, match="custom function"):
        sq = ad.custom_vjp(lambda v: v * v)
        sq.defvjp(lambda v: (v * v, v), lambda v, g: (2 * v * g,))
        ad.record_step(lambda x, y: sq(F.mse_loss(m(x), y)), o, x, y)
    assert all(p.grad is None for p in m.parameters()) and not o.state


def test_a_parameter_of_another_shape_is_refused_and_nothing_changes():
    m, o, (x, y), step = _recorded(lambda ps: optim.Adam(ps, lr=0.1))
    before = [_bits(p) for p in m.parameters()]
    steps = [s["step"] for s in o.state.values()]
    plan = next(iter(step._plans.values()))
    plan.params = (plan.params[1],) + plan.params[1:]   # input 0 now names a bias: wrong shape
    step._cache = None
    with pytest.raises(ValueError, match="train_step: parameter 0 is"):
        step(x, y)
    assert [_bits(p) for p in m.parameters()] == before
    assert [s["step"] for s in o.state.values()] == steps


def test_record_follows_values_computed_inside_f_from_tensors_that_do_not_require_grad():
    # w.T is computed inside f from a tensor that does not require grad: the plan must recompute it
    # from w (and see an in-place write to w), not hold the value of the recording (regression)
    w = ad.tensor(np.arange(9.0).reshape(3, 3))

    def f(x):
        return (x @ w.T).sum()

    tf = ad.record(f, np.ones(3))
    with ad.no_grad():
        w.copy_(w * 0.5)
    x = np.array([1.0, -2.0, 0.5])
    assert _bits(tf(x)) == _bits(f(ad.tensor(x)))
    assert _bits(tf.grad(x)) == _bits(ad.grad(f)(x))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_record_follows_index_ops_on_tensors_that_do_not_require_grad(dtype):
    # gather, scatter_add and where on a constant are recorded too (above); they must then keep
    # their index or mask as any recorded node does, or the replay reads a missing index
    # (regression: a segfault, found by the C fuzzer)
    c = ad.tensor(np.arange(1.0, 7.0).astype(dtype))
    idx = np.array([0, 2, 2, 5])
    cond = np.array([True, False, True, False])

    def f(x):
        picked = c[idx]                                       # gather
        spread = ad.scatter_add(ad.zeros(6, dtype=dtype), 0, np.array([1, 1, 4, 0]), c[:4])
        chosen = ad.where(cond, c[:4], c[1:5])                # where's mask
        return (x * picked).sum() + (x * spread[:4]).sum() + (x * chosen * chosen).sum()

    tf = ad.record(f, np.ones(4, dtype))
    for x in (np.ones(4, dtype), np.array([2.0, -1.0, 0.5, 3.0], dtype)):
        assert _bits(tf(x)) == _bits(f(ad.tensor(x)))
        assert _bits(tf.grad(x)) == _bits(ad.grad(f)(x))
    with ad.no_grad():
        c.copy_(c * 3)                                        # the plan recomputes from c
    x = np.array([2.0, -1.0, 0.5, 3.0], dtype)
    assert _bits(tf(x)) == _bits(f(ad.tensor(x)))
    assert _bits(tf.grad(x)) == _bits(ad.grad(f)(x))


def test_plan_memory_grows_linearly_with_the_chain():
    # a chain of n scalar ops: the plan's arena is about a word per op, the same per op at 10x the
    # length (a quadratic step or a per-op buffer that grows with n would show), and building and
    # replaying a long chain needs no recursion
    def chain_of(n):
        def chain(a, b):
            v = a
            for _ in range(n // 5):
                v = ad.log(ad.exp(ad.tanh((v + a) * b)))
            return v
        return chain

    per_op = []
    for n in (5_000, 50_000):
        tf = ad.record(chain_of(n), 0.5, 0.9, argnums=(0, 1))
        stats = tf.plan_stats()
        assert stats["ops"] == n
        per_op.append(stats["bytes"] / n)
        v, g = tf.value_and_grad(0.4, 0.8)
        v0, g0 = ad.value_and_grad(chain_of(n), argnums=(0, 1))(0.4, 0.8)
        assert _bits(v) == _bits(v0) and all(_bits(a) == _bits(b) for a, b in zip(g, g0))
    assert per_op[0] <= 12 and per_op[1] <= 12, per_op     # 8: one value each, adjoints reused
    assert abs(per_op[1] - per_op[0]) <= 0.5, per_op


def test_a_step_on_another_thread_is_a_clear_error_and_changes_nothing():
    # the parameters live on the tape of the thread that made them; a step elsewhere is refused
    import threading
    m, o, (x, y), step = _recorded(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9))
    before = [_bits(p) for p in m.parameters()]
    errors = []

    def run():
        try:
            step(x, y)
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(errors) == 1 and "another thread" in errors[0]
    assert [_bits(p) for p in m.parameters()] == before
    step(x, y)                                   # still usable on its own thread
    assert [_bits(p) for p in m.parameters()] != before


def test_a_step_that_fails_in_the_replay_changes_nothing():
    # a Cholesky of a batch that is not positive definite fails in the replay's forward, after the
    # step has resolved the parameters: values, grads (overwritten in place by a step, so the core
    # once cleared them here), optimizer state and step counts stay as they were
    m = _model(np.float64)
    o = optim.Adam(m.parameters(), lr=0.1, amsgrad=True)
    x, y = _batches(np.float64, 1)[0]
    spd, bad = np.eye(2) * 2.0, np.array([[1.0, 0.0], [0.0, -1.0]])
    step = ad.record_step(lambda x, y, a: F.mse_loss(m(x), y) + ad.linalg.cholesky(a).sum(), o, x, y, spd)
    step(x, y, spd)
    params = [(_bits(p), _bits(p.grad)) for p in m.parameters()]
    state = copy.deepcopy(o.state_dict())
    assert all(g is not None for _, g in params)
    with pytest.raises(np.linalg.LinAlgError, match="cholesky"):
        step(x, y, bad)
    assert [(_bits(p), _bits(p.grad)) for p in m.parameters()] == params
    o2 = optim.Adam(m.parameters(), lr=0.1, amsgrad=True)
    o2.load_state_dict(state)
    _same_state(o, o2)
    # and the next step is the one that would have come
    m2 = copy.deepcopy(m)
    o3 = optim.Adam(m2.parameters(), lr=0.1, amsgrad=True)
    o3.load_state_dict(state)
    step(x, y, spd)
    o3.zero_grad()
    (F.mse_loss(m2(x), y) + ad.linalg.cholesky(ad.tensor(spd)).sum()).backward()
    o3.step()
    _same_params(m, m2)
