"""ad.record: a function recorded once and replayed in C (pyautodiff/record.py, csrc/replay.c).

The promise under test is bit-identity: a replay at new inputs gives exactly the bits eager
ad.grad / ad.vjp give there (same kernels, same order), on every op of the op table in float32 and
float64 and on whole workloads. Then the guards: a replay never returns a value computed from a
stale branch, mask or constant; it records again (or raises with on_guard="raise").
"""
import threading
import warnings
import zlib

import numpy as np
import pytest

import pyautodiff as ad
from op_table import ROWS, F32, F64
from test_ops_models import CASES as MODEL_CASES

DTYPES = [F32, F64]


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _bits(a):
    a = np.asarray(a.numpy() if isinstance(a, ad.Tensor) else a)
    return a.dtype.str, a.shape, a.tobytes()


def _same_bits(got, expected):
    assert _bits(got) == _bits(expected), (got, expected)


def _perturbed(xs, rng):
    """New inputs near the recorded ones: the same signs and order pattern is not guaranteed, so a
    guard may fire; either way the replay must equal eager."""
    with np.errstate(invalid="ignore", over="ignore"):    # inf and nan samples stay what they are
        return tuple((x + rng.uniform(-1e-3, 1e-3, x.shape) * (np.abs(x) + 1)).astype(x.dtype)
                     if x.dtype.kind == "f" else x for x in xs)


def _check_replays(f, xs, g, rng):
    """Record f at xs; its replays at xs and at perturbed inputs give eager's bits."""
    n = len(xs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # ops with a zero derivative warn alike in both paths
        tf = ad.record(f, *xs, argnums=tuple(range(n)))
        for inputs in (xs, _perturbed(xs, rng)):
            out0, vjp0 = ad.vjp(f, *inputs)
            out1, vjp1 = tf.vjp(*inputs)
            _same_bits(out1, out0)
            _same_bits(tf(*inputs), out0)
            for a, b in zip(vjp1(g), vjp0(g)):
                _same_bits(a, b)


OP_CASES = [pytest.param(r, i, id=f"{r.name}-{i}-{s.label}") for r in ROWS for i, s in enumerate(r.sample_list())]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("r,i", OP_CASES)
def test_replay_is_bit_identical_on_every_op(r, i, dtype):
    sample = r.sample_list()[i]
    xs = r.cast(sample, dtype)

    def f(*ts):
        return r.fn(*ts, **sample.params)

    with ad.no_grad():
        out = f(*[ad.tensor(x) for x in xs])
    rng = _rng(r.name, i, str(dtype))
    _check_replays(f, xs, rng.standard_normal(out.shape).astype(out.dtype), rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_replay_is_bit_identical_on_indexing_and_models(case, dtype):
    _, _, arrays, call, _, _ = case
    xs = tuple(a.astype(dtype) for a in arrays)
    with ad.no_grad():
        out = call(*[ad.tensor(x) for x in xs])
    rng = _rng(case[0], str(dtype))
    _check_replays(call, xs, rng.standard_normal(out.shape).astype(out.dtype), rng)


# ---- composite workloads ----

def _mlp_loss(params, X, y):
    h = ad.tanh(X @ params["W1"] + params["b1"])
    logits = h @ params["W2"] + params["b2"]
    return (ad.logsumexp(logits, axis=1) - (logits * y).sum(axis=1)).mean() + 1e-3 * (params["W1"] ** 2).sum()


def _mlp_params(rng, dtype):
    return {"W1": rng.standard_normal((5, 16)).astype(dtype), "b1": np.zeros(16, dtype),
            "W2": rng.standard_normal((16, 3)).astype(dtype), "b2": rng.standard_normal(3).astype(dtype)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mlp_loss_replays_bit_identically_over_training(dtype):
    rng = _rng("mlp", str(dtype))
    X = rng.standard_normal((32, 5)).astype(dtype)
    y = np.eye(3, dtype=dtype)[rng.integers(0, 3, 32)]
    params = _mlp_params(rng, dtype)
    tf = ad.record(_mlp_loss, params, X, y)
    for step in range(5):
        v1, g1 = tf.value_and_grad(params, X, y)
        v0, g0 = ad.value_and_grad(_mlp_loss)(params, X, y)
        _same_bits(v1, v0)
        assert set(g1) == set(g0) == set(params)
        for k in params:
            _same_bits(g1[k], g0[k])
        params = {k: (v - 0.1 * g1[k].numpy()).astype(dtype) for k, v in params.items()}
    assert tf.records == 1     # the same shapes, no guard: one recording serves every step


def test_micrograd_mlp_replays_bit_identically():
    from benchmarks.workloads import micrograd_mlp as mm
    data = mm.make_data({"points": 6, "layers": [2, 16, 16, 1]})
    flat = [np.float64(p) for p in mm.flatten(data["layers"])]
    shape = data["layers"]

    def loss(params):
        it = iter(params)
        layers = mm.map_params(shape, lambda _: next(it))
        return mm.scalar_loss(layers, data["X"], data["y"], relu=ad.relu)

    params = [np.asarray(p) for p in flat]
    tf = ad.record(loss, params)
    for step in range(3):
        g1 = tf.grad(params)
        g0 = ad.grad(loss)(params)
        assert isinstance(g1, list) and len(g1) == len(g0) == 337
        for a, b in zip(g1, g0):
            _same_bits(a, b)
        params = [np.asarray(p - 0.05 * g.numpy()) for p, g in zip(params, g1)]
    # the hinge's relu is an op, not a Python branch: no guard, no new recording
    assert tf.records == 1 and tf.plan_stats()["guards"] == 0


def test_scalar_chain_replays_bit_identically():
    def chain(a, b):
        v = a
        for _ in range(400):
            v = ad.log(ad.exp(ad.tanh((v + a) * b)))
        return v

    tf = ad.record(chain, 0.5, 0.9, argnums=(0, 1))
    assert tf.plan_stats()["ops"] == 2000
    for a, b in [(0.5, 0.9), (-0.3, 1.7), (2.0, -0.1)]:
        v1, g1 = tf.value_and_grad(a, b)
        v0, g0 = ad.value_and_grad(chain, argnums=(0, 1))(a, b)
        _same_bits(v1, v0)
        assert isinstance(g1, tuple) and len(g1) == 2
        _same_bits(g1[0], g0[0])
        _same_bits(g1[1], g0[1])


def test_results_follow_the_functional_structures():
    def f(p, scale):
        return (p["a"] * p["b"][0] + p["b"][1]).sum() * scale

    p = {"a": np.ones(3), "b": (np.arange(3.0), np.full(3, 2.0))}
    tf = ad.record(f, p, 2.0)
    g1, g0 = tf.grad(p, 2.0), ad.grad(f)(p, 2.0)
    assert type(g1) is dict and type(g1["b"]) is tuple
    for k in ("a",):
        _same_bits(g1[k], g0[k])
    for a, b in zip(g1["b"], g0["b"]):
        _same_bits(a, b)
    v = tf(p, 2.0)
    assert isinstance(v, ad.Tensor) and not v.requires_grad
    # a static argument that changes records again, and still gives the eager result
    _same_bits(tf.grad(p, 3.0)["a"], ad.grad(f)(p, 3.0)["a"])
    assert tf.records == 2


def test_vjp_of_a_vector_output_and_scalar_checks():
    f = lambda x, w: ad.tanh(x @ w)
    rng = _rng("vjp")
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    tf = ad.record(f, x, w, argnums=(0, 1))
    out, vjp_fn = tf.vjp(x, w)
    ct = rng.standard_normal((4, 2))
    got, expected = vjp_fn(ct), ad.vjp(f, x, w)[1](ct)
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, expected):
        _same_bits(a, b)
    with pytest.raises(TypeError, match="scalar"):
        tf.grad(x, w)
    with pytest.raises(ValueError, match="cotangent"):
        vjp_fn(np.ones((2, 4)))


# ---- guards ----

def test_a_flipped_comparison_records_again_and_never_uses_the_stale_mask():
    f = lambda x: ad.where(x > 0, x * 2.0, x * 3.0).sum()
    x = np.array([1.0, 2.0, 3.0])
    tf = ad.record(f, x)
    # same mask at other values: the plan is reused
    _same_bits(tf.grad(x * 2), ad.grad(f)(x * 2))
    assert tf.records == 1
    # a flipped sign: the recorded mask would give 2 where eager gives 3
    y = np.array([1.0, -2.0, 3.0])
    _same_bits(tf.grad(y), ad.grad(f)(y))
    np.testing.assert_array_equal(tf.grad(y).numpy(), [2.0, 3.0, 2.0])
    assert tf.records == 2
    strict = ad.record(f, x, on_guard="raise")
    with pytest.raises(ad.GuardError, match="comes out differently"):
        strict.grad(y)


def test_item_in_a_python_if_is_a_guard():
    def f(x):
        s = x.sum()
        if s.item() > 0:
            return (x * x).sum()
        return (x * 3.0).sum()

    x = np.array([1.0, 2.0])
    tf = ad.record(f, x)
    neg = np.array([-1.0, -2.0])
    _same_bits(tf.grad(neg), ad.grad(f)(neg))
    np.testing.assert_array_equal(tf.grad(neg).numpy(), [3.0, 3.0])
    with pytest.raises(ad.GuardError):
        ad.record(f, x, on_guard="raise").grad(neg)


def test_float_bool_and_boolean_masks_are_guarded():
    def f(x):
        if bool(x[0] > 0):
            x = x * float(x[1])       # float() of a traced value: its value is part of the plan
        return x[x > 1.0].sum()       # a mask from traced values changes the gather's shape

    x = np.array([1.0, 2.0, 3.0])
    tf = ad.record(f, x)
    for y in ([1.0, 2.0, 3.0], [-1.0, 2.0, 3.0], [1.0, 0.1, 5.0], [1.0, 2.0, 0.1]):
        y = np.array(y)
        v1, g1 = tf.value_and_grad(y)
        v0, g0 = ad.value_and_grad(f)(y)
        _same_bits(v1, v0)
        _same_bits(g1, g0)


def test_a_shape_change_records_again():
    f = lambda x: (x ** 2).sum()
    tf = ad.record(f, np.ones(3))
    _same_bits(tf.grad(np.arange(4.0)), ad.grad(f)(np.arange(4.0)))
    _same_bits(tf.grad(np.arange(4.0, dtype=np.float32)), ad.grad(f)(np.arange(4.0, dtype=np.float32)))
    assert tf.records == 3
    tf.grad(np.ones(3))
    assert tf.records == 3     # plans are kept per shape and dtype


def test_a_constant_written_in_place_records_again():
    W = ad.tensor(np.ones((2, 2)), requires_grad=True)
    f = lambda x: (x @ W).sum()
    x = np.array([1.0, 2.0])
    tf = ad.record(f, x)
    with ad.no_grad():
        W.mul_(3.0)
    _same_bits(tf.grad(x), ad.grad(f)(x))
    np.testing.assert_array_equal(tf.grad(x).numpy(), [6.0, 6.0])
    strict = ad.record(f, x, on_guard="raise")
    with ad.no_grad():
        W.add_(1.0)
    with pytest.raises(ad.GuardError, match="written in place"):
        strict.grad(x)


@pytest.mark.parametrize("body,match", [
    (lambda x: (ad.tensor(1.0) * x.detach()).sum() + x.sum(), "off the graph"),
    (lambda x: x.data.sum() + x.sum(), "off the graph"),
])
def test_values_computed_off_the_graph_cannot_be_recorded(body, match):
    with pytest.raises(RuntimeError, match=match):
        ad.record(body, np.ones(3))


def test_no_grad_inside_f_cannot_be_recorded():
    def f(x):
        with ad.no_grad():
            c = x * 2.0
        return (x * c).sum()

    with pytest.raises(RuntimeError, match="off the graph"):
        ad.record(f, np.ones(3))


def test_custom_functions_are_refused():
    @ad.custom_vjp
    def double(x):
        return x * 2.0

    double.defvjp(lambda x: (x * 2.0, None), lambda res, g: (g * 2.0,))
    with pytest.raises(RuntimeError, match="custom function"):
        ad.record(lambda x: double(x).sum(), np.ones(3))


def test_on_guard_is_checked():
    with pytest.raises(ValueError, match="on_guard"):
        ad.record(lambda x: x.sum(), np.ones(2), on_guard="ignore")


def test_an_output_that_does_not_depend_on_the_input_warns_and_gives_zeros():
    with pytest.warns(UserWarning, match="does not depend"):
        tf = ad.record(lambda x: ad.tensor(np.ones(2)).sum(), np.ones(3))
    np.testing.assert_array_equal(tf.grad(np.arange(3.0)).numpy(), np.zeros(3))
    assert tf(np.zeros(3)).item() == 2.0


def test_identity_and_unused_inputs():
    tf = ad.record(lambda x, y: x, np.array(3.0), np.ones(2), argnums=(0, 1))
    gx, gy = tf.grad(np.array(5.0), np.ones(2))
    assert gx.item() == 1.0
    np.testing.assert_array_equal(gy.numpy(), np.zeros(2))


# ---- threads ----

def test_one_callable_from_two_threads_is_serialized_and_exact():
    f = lambda x: (ad.tanh(x @ x.T) * x.sum()).sum()
    rng = _rng("threads")
    xs = [rng.standard_normal((6, 6)) for _ in range(8)]
    expected = [ad.grad(f)(x).numpy() for x in xs]
    tf = ad.record(f, xs[0])
    errors = []

    def work():
        try:
            for _ in range(25):
                for x, e in zip(xs, expected):
                    assert tf.grad(x).numpy().tobytes() == e.tobytes()
        except BaseException as exc:     # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert tf.records == 1


def test_each_thread_its_own_callable():
    f = lambda x: (ad.sin(x) * x).sum()
    results, errors = {}, []

    def work(k):
        try:
            x = np.linspace(-1, 1, 5) * (k + 1)
            tf = ad.record(f, x)
            for _ in range(50):
                g = tf.grad(x)
            results[k] = (g.numpy().tobytes(), ad.grad(f)(x).numpy().tobytes())
        except BaseException as exc:     # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(results) == 3 and all(a == b for a, b in results.values())


def test_a_recorded_function_inside_a_transform_is_refused():
    tf = ad.record(lambda x: (x * x).sum(), np.ones(2))
    with pytest.raises(RuntimeError, match="cannot differentiate"):
        ad.grad(lambda x: tf(x))(np.ones(2))


def test_plans_are_a_bounded_cache():
    from pyautodiff.record import MAX_PLANS
    tf = ad.record(lambda x, k: (x * k).sum(), np.ones(2), 0)
    for k in range(MAX_PLANS + 5):
        assert tf.grad(np.ones(2), k).numpy().tolist() == [k, k]
    assert tf.plan_stats()["plans"] == MAX_PLANS


def test_a_traced_training_loop_equals_the_eager_one():
    # parameters passed in (not closed over): an optimizer step then changes the inputs, not a
    # constant of the plan, so one recording serves the whole loop
    rng = _rng("train")
    X, y = rng.standard_normal((16, 4)), rng.standard_normal((16, 2))

    def loss(p):
        return ((ad.tanh(X @ p["w"].T + p["b"]) - y) ** 2).mean()

    def make():
        layer = ad.nn.Linear(4, 2, seed=3)
        params = {"w": layer.weight, "b": layer.bias}
        return params, ad.optim.Adam(list(params.values()), lr=0.05)

    (pa, opt_a), (pb, opt_b) = make(), make()
    tf = ad.record(loss, pb)
    for _ in range(6):
        with ad.no_grad():                  # ad.grad's numeric path, as a replay computes
            ga = ad.grad(loss)(pa)
        gb = tf.grad(pb)
        for k in pa:
            pa[k].grad, pb[k].grad = ga[k], gb[k]
        opt_a.step()
        opt_b.step()
    for k in pa:
        _same_bits(pa[k], pb[k])
    assert tf.records == 1


def test_the_c_plan_api_checks_its_arguments():
    from pyautodiff._capi import ffi, lib
    x = ad.tensor(np.ones(2), requires_grad=True)
    y = (x * x).sum()
    pp, where = ffi.new("ad_plan **"), ffi.new("int64_t[]", 1)
    for inputs, message in [([x._h, x._h], b"repeats an earlier input"), ([y._h], b"is not a leaf")]:
        assert lib.ad_plan_build(y._h, len(inputs), ffi.new("int64_t[]", inputs), 0, ffi.NULL, where, pp) < 0
        assert message in ffi.string(lib.ad_last_error())
    assert lib.ad_plan_build_data(y._h, 1, ffi.new("int64_t[]", [x._h]), 1, 0, ffi.NULL, where, 0, pp) < 0
    assert b"fuse_from is 0" in ffi.string(lib.ad_last_error())
    assert lib.ad_plan_build(y._h, 1, ffi.new("int64_t[]", [x._h]), 0, ffi.NULL, where, pp) == 0
    plan = ffi.gc(pp[0], lib.ad_plan_free)
    g = np.empty(2)
    grads = ffi.new("void *[]", [ffi.from_buffer(g)])
    assert lib.ad_plan_backward(plan, ffi.NULL, grads) < 0
    assert b"backward before a forward" in ffi.string(lib.ad_last_error())
    v = np.array([3.0, -1.0])
    out = np.empty(())
    assert lib.ad_plan_run(plan, ffi.new("void *[]", [ffi.from_buffer(v)]), ffi.from_buffer(out), ffi.NULL, grads) == 0
    assert out == 10.0 and g.tolist() == [6.0, -2.0]
    assert lib.ad_plan_run(plan, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL) < 0     # inputs missing


def test_an_index_and_a_mask_on_tensors_that_do_not_require_grad_are_replayed():
    # a gather and a where on a closed-over tensor that does not require grad are recorded (so a
    # replay recomputes them); the core kept their index and mask only for inputs requiring grad,
    # and the replay read a NULL index (csrc/kernels/index.c, found by fuzz_capi seed 5)
    table = ad.tensor(np.arange(12.0).reshape(4, 3))
    idx = np.array([2, 0, 2, 3])
    mask = np.array([True, False, True])

    def f(x):
        return (table[idx] * x).sum() + (ad.where(mask, table, table * 2.0) * x[0]).sum()

    tf = ad.record(f, np.ones(3))
    x = np.array([0.5, -1.5, 2.0])
    _same_bits(tf(x), f(x))
    _same_bits(tf.grad(x), ad.grad(f)(x))
    t = np.arange(12.0).reshape(4, 3)
    w = np.where(mask, t, t * 2.0)
    np.testing.assert_allclose(np.asarray(tf(x)), (t[idx] * x).sum() + w.sum() * x[0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(tf.grad(x)), t[idx].sum(0) + np.array([w.sum(), 0, 0]), rtol=1e-12)


# ---- value buffers shared by liveness (csrc/replay.c) ----

def _mixed_chain(x, y):
    """Values of three sizes with fan-out: some that reverse steps read (exp's own value, the
    operands of *, tanh's value), the rest (sums, slices, concatenations, scalar ops, +) read only
    by later ops of the forward, whose buffers later values take."""
    h = x
    for k in range(9):
        a = ad.exp(h * 0.1) + y
        b = ad.concatenate([a[1:], a[:1] * 2.0])
        c = b * h - ad.sum(a, axis=0, keepdims=True) / 7.0
        h = ad.tanh(c) if k % 3 else ad.sin(c)[::-1] + 0.5
        h = ad.stack([h[:, 0] - 1.0, h[:, 1]], axis=1) if k == 4 else h
    return ad.sum(h * h) + ad.sum(ad.mean(h, axis=1) ** 2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fuse", [True, False], ids=["fuse-default", "no-fusion"])
def test_values_sharing_buffers_replay_bit_identically(dtype, fuse):
    rng = _rng("shared-buffers", str(dtype))
    xs = (rng.standard_normal((23, 2)).astype(dtype), rng.standard_normal((23, 2)).astype(dtype))
    tf = ad.record(_mixed_chain, *xs, argnums=(0, 1), fuse=fuse)
    for inputs in (xs, _perturbed(xs, rng), _perturbed(xs, rng)):
        v0, g0 = ad.value_and_grad(_mixed_chain, argnums=(0, 1))(*inputs)
        v1, g1 = tf.value_and_grad(*inputs)
        _same_bits(v1, v0)
        for a, b in zip(g1, g0):
            _same_bits(a, b)
    assert tf.records == 1


def test_a_chain_nothing_reads_backward_takes_a_few_buffers_not_one_per_op():
    n, ops = 1000, 400
    x = np.linspace(-1, 1, n)

    def chain(x):
        for k in range(ops):
            x = x * 1.001 + 0.001 if k % 2 else x[::-1] - 0.5
        return ad.sum(x)

    tf = ad.record(chain, x)
    value = 8 * n
    # the input, its gradient, the root's seed, two adjoints and a few values take turns
    assert tf.plan_stats()["bytes"] < 12 * (value + 128), tf.plan_stats()
    _same_bits(tf.grad(x * 0.5), ad.grad(chain)(x * 0.5))


def test_a_region_never_holds_a_value_whose_buffer_is_shared():
    # a plan built for the default fusion size (AD_PLAN_FUSE_MIN) shares the buffers of smaller
    # values; fused later at 1 element, its regions must leave those values out (a region reads
    # its operands again in its reverse), and the replay still equals eager
    from pyautodiff._capi import ffi, lib
    xv = np.linspace(0.1, 2.0, 1000)
    x = ad.tensor(xv, requires_grad=True)
    y = ((ad.exp(x * 0.5) + 1.0) * x * 0.25 - 2.0).sum()
    pp, where = ffi.new("ad_plan **"), ffi.new("int64_t[]", 1)
    assert lib.ad_plan_build(y._h, 1, ffi.new("int64_t[]", [x._h]), 0, ffi.NULL, where, pp) == 0
    plan = ffi.gc(pp[0], lib.ad_plan_free)
    counts = ffi.new("int64_t[3]")
    assert lib.ad_plan_fuse(plan, 1, counts, counts + 1, counts + 2) == 0
    # shared: x * 0.5 (so exp, reading it, stays out too), (.) * x, * 0.25 and - 2.0; kept: exp's
    # value (its rule reads it) and exp(.) + 1.0 (the product's rule reads it). That leaves + 1.0
    # alone, and a region needs two ops: nothing fuses (all six do without the check)
    assert counts[1] == 0
    v = xv[::-1].copy()
    out, g = np.empty(()), np.empty(1000)
    assert lib.ad_plan_run(plan, ffi.new("void *[]", [ffi.from_buffer(v)]), ffi.from_buffer(out), ffi.NULL,
                           ffi.new("void *[]", [ffi.from_buffer(g)])) == 0

    def f(x):
        return ((ad.exp(x * 0.5) + 1.0) * x * 0.25 - 2.0).sum()
    v0, g0 = ad.value_and_grad(f)(v)
    _same_bits(out, v0)
    _same_bits(g, g0)


# ---- large inputs and gradients in place (csrc/replay.c, bind_caller) ----

def _shifted(a, shift):
    """a's values in a buffer starting `shift` bytes past a 64-byte line: the caller's arrays are
    wherever NumPy put them, and the replay reads and writes them there."""
    raw = np.zeros(a.nbytes + 128, np.uint8)
    at = (-raw.ctypes.data) % 64 + shift
    out = raw[at:at + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_large_inputs_and_gradients_in_place_give_eager_bits(dtype, fuse):
    rng = _rng("in-place", str(dtype))
    n = 20_000   # above both AD_PLAN_FUSE_MIN and INPLACE_MIN_BYTES in float32 and float64

    def f(x, y, w):
        return ad.mean(ad.square(ad.tanh(x * w) - y) + 0.1 * ad.abs(x)) + ad.sum(ad.exp(-x * x) * y[::-1])

    x0, y0 = rng.standard_normal(n).astype(dtype), rng.uniform(-1, 1, n).astype(dtype)
    w0 = np.asarray(0.7, dtype)
    tf = ad.record(f, x0, y0, w0, argnums=(0, 1, 2), fuse=fuse)
    assert (tf.plan_stats()["fused_ops"] > 0) == fuse
    for shift in (0, 8, 24):
        x, y = _shifted(x0 * (1 + shift / 100), shift), _shifted(y0, 40 - shift)
        keep = x.copy(), y.copy()
        v0, g0 = ad.value_and_grad(f, argnums=(0, 1, 2))(x, y, w0)
        v1, g1 = tf.value_and_grad(x, y, w0)
        _same_bits(v1, v0)
        for a, b in zip(g1, g0):
            _same_bits(a, b)
        _same_bits(x, keep[0])   # read in place, never written
        _same_bits(y, keep[1])


def test_buffers_in_place_fall_back_to_copies_when_the_caller_overlaps_them():
    from pyautodiff._capi import ffi, lib
    n = 10_000
    xv, yv = np.linspace(-1, 1, n), np.linspace(2, 0, n)

    def f(x, y):
        return ad.sum(ad.sin(x) * y)

    tf = ad.record(f, xv, yv, argnums=(0, 1))
    plan = next(iter(tf._plans.values())).plan
    _, (gx0, gy0) = ad.value_and_grad(f, argnums=(0, 1))(xv, yv)
    out = np.empty(())

    def run(inputs, grads):
        return lib.ad_plan_run(plan, ffi.new("void *[]", [ffi.from_buffer(a) for a in inputs]), ffi.from_buffer(out),
                               ffi.NULL, ffi.new("void *[]", [ffi.from_buffer(g) for g in grads]))

    # y's gradient written over x: in place, the reverse would write sin(x) there before sin's
    # step reads x for cos(x), and x's gradient would be wrong
    x, y, gx = xv.copy(), yv.copy(), np.empty(n)
    assert run([x, y], [gx, x]) == 0
    _same_bits(gx, gx0)
    _same_bits(x, gy0)
    # the buffers did not change the plan: separate ones give the same bits again
    gx, gy = np.empty(n), np.empty(n)
    assert run([xv, yv], [gx, gy]) == 0
    _same_bits(gx, gx0)
    _same_bits(gy, gy0)
    # the inputs were the caller's: a backward alone needs a forward first
    assert lib.ad_plan_backward(plan, ffi.NULL, ffi.new("void *[]", [ffi.from_buffer(gx), ffi.from_buffer(gy)])) < 0
    assert b"backward before a forward" in ffi.string(lib.ad_last_error())
    assert lib.ad_plan_forward(plan, ffi.new("void *[]", [ffi.from_buffer(xv), ffi.from_buffer(yv)]), ffi.NULL) == 0
    gx, gy = np.empty(n), np.empty(n)
    assert lib.ad_plan_backward(plan, ffi.NULL, ffi.new("void *[]", [ffi.from_buffer(gx), ffi.from_buffer(gy)])) == 0
    _same_bits(gx, gx0)
    _same_bits(gy, gy0)


# ---- adjoints handed over instead of copied (csrc/replay.c, hands_over and views_block) ----

def _rhs_mix(x, y):
    """Steps that copy an adjoint unchanged (the sum's, subtract's first operand, + scalar) or a
    block of it (a concatenation or stack along its first axis with one input needing a
    gradient), beside ones that must not hand anything over: x + x, a concatenation along the
    last axis, one whose two inputs both need gradients."""
    one = ad.tensor(np.ones(1, dtype=x.dtype))
    z = x
    for _ in range(3):
        k = x * ad.concatenate([one, z[:-1]])                 # the ODE's right-hand side
        z = z + 0.5 * k - (k + 1.0)
        z = z + z
    m = ad.reshape(z, (5, -1))
    m = ad.concatenate([m, m * 2.0], axis=1) - ad.stack([y, y * 0.5, y, y, y])[:, :1]
    w = ad.concatenate([z, y])
    s = ad.stack([z, ad.tensor(np.zeros(z.shape, z.dtype))])
    return ad.sum(m * m) + ad.sum(ad.tanh(w)) + ad.sum(s[0] * s[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adjoints_handed_over_or_viewed_give_eager_bits(dtype):
    rng = _rng("handover", str(dtype))
    xs = (rng.uniform(0, 1, 300).astype(dtype), rng.standard_normal(300).astype(dtype))
    tf = ad.record(_rhs_mix, *xs, argnums=(0, 1))
    for inputs in (xs, _perturbed(xs, rng)):
        v0, g0 = ad.value_and_grad(_rhs_mix, argnums=(0, 1))(*inputs)
        v1, g1 = tf.value_and_grad(*inputs)
        _same_bits(v1, v0)
        for a, b in zip(g1, g0):
            _same_bits(a, b)


def test_the_ode_workload_replays_bit_identically():
    from benchmarks.workloads import ode
    x = np.random.default_rng(3).random(24)   # y(2)[-1] reaches x[i] after 24 - i stages: 7 steps have 28
    one = ad.tensor(np.ones(1))

    def loss(x):
        return ode.solve(ad, x, one, 7)[-1]

    tf = ad.record(loss, x)
    for v in (x, x[::-1].copy()):
        _same_bits(tf.grad(v), ad.grad(loss)(v))
    _, expected = ode.numpy_gradient(x, 7)
    assert np.all(expected != 0)
    np.testing.assert_allclose(tf.grad(x).numpy(), expected, rtol=1e-12, atol=0)


# ---- views: slices that are one block of their operand, and reshapes (csrc/replay.c, is_view) ----

def _views(x):
    k = (x - 1.0)[2:]
    w = k[:-1] * k[1:]              # views a rule reads in the reverse: their operand is kept
    a = x * 2.0
    v = a[1:]                       # a block of a, read after a's last direct reader
    b = a + 1.0
    c = (b * 3.0 - 0.5) * 0.25      # values that would take a's buffer if v did not keep it alive
    r = ad.reshape(c, (4, -1))[1:]  # a view of a view (a block of the reshape)
    late = v + c[1:]                # a's block read after c's values were made: no rule reads
                                    # a, v or late, so only v's reads keep a's buffer from them
    t = ad.reshape(x * x, (4, -1))[:, 1:3]   # not one block: copied
    u = (x + 0.5)[::-1]                      # not in order: copied
    return ad.sum(late) + ad.sum(r * r) + ad.sum(t) + ad.sum(u * c) + ad.sum(w), v[:5]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_views_replay_bit_identically(dtype):
    rng = _rng("views", str(dtype))
    x = rng.standard_normal(40).astype(dtype)
    loss = lambda x: _views(x)[0]
    tf = ad.record(loss, x)
    for v in (x, _perturbed((x,), rng)[0]):
        val0, g0 = ad.value_and_grad(loss)(v)
        val1, g1 = tf.value_and_grad(v)
        _same_bits(val1, val0)
        _same_bits(g1, g0)
    # a view as the output, through vjp
    out = lambda x: _views(x)[1]
    tv = ad.record(out, x)
    ct = rng.standard_normal(5).astype(dtype)
    o0, vjp0 = ad.vjp(out, x)
    o1, vjp1 = tv.vjp(x)
    _same_bits(o1, o0)
    _same_bits(vjp1(ct)[0], vjp0(ct)[0])
