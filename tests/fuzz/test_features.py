"""The differential fuzzer, following the features beyond one backward() of one program:

- fan-out: one value (a leaf, or an interior value) consumed by two to four ops of different
  families (elementwise, reduce, matmul, layout, indexing, softmax, where, concatenate/stack,
  clip, cast; and broadcast_to, where and matmul broadcasting it over a new axis), the
  consumers' sums or means added into one root, gradients against the reference VJPs
  chained over the program (test_differential's checks, every op's forward included);
- nested transforms: random smooth programs f(x), and their second order by every route
  (hessian, jacfwd(jacrev), grad of grad, jvp of grad, hvp) against central differences of the
  first-order gradient (itself checked against differences of f);
- traced replay: ad.record of a random smooth program against eager value_and_grad, bit for
  bit, at the recorded input and at a new one (float64 and float32);
- in-place updates: random sequences of `+=`, `*=`, `[...] =`, `sub_`, `clamp_`, optimizer-style
  steps under no_grad() and recorded graphs that read (or do not read) the updated values, against
  a NumPy mirror of every value and .grad, and against the version counters: backward() raises
  exactly when a value its graph reads was updated since, and then changes nothing.

CI runs a small fixed-seed sample of each (well under a minute together); PYAUTODIFF_FUZZ_EXAMPLES=N
runs N examples of each (and PYAUTODIFF_FUZZ_RANDOM=1 new ones). The soak test (threads and
interrupts for minutes) is tools/soak.py, not part of the suite.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import pyautodiff as ad
from pyautodiff.numerical import numerical_grad, numerical_jacobian
from hypothesis.extra import numpy as hnp
from test_differential import DIM, F32, F64, Program, check_backward, draw_shape, src_array


def _settings(smoke):
    return settings(max_examples=int(os.environ.get("PYAUTODIFF_FUZZ_EXAMPLES", smoke)), deadline=None,
                    derandomize=not os.environ.get("PYAUTODIFF_FUZZ_RANDOM"), print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---- fan-out through every op family --------------------------------------------------------

FAMILIES = ["unary", "binary", "scalar", "reduce", "softmax", "matmul", "reshape", "transpose",
            "broadcast_to", "cast", "clip", "where", "getitem", "concatenate", "stack",
            "broadcast_to new axis", "where new axis", "matmul new batch"]


def broadcasting_consumer(prog, x, kind):
    """Consumers that broadcast x over a new leading axis, so that x's contribution is formed
    output-shaped and summed back by the sweep (its scratch path), not inside a kernel."""
    data, xv = prog.data, prog.values[x]
    xs, name = xv.array.shape, xv.name
    lead = (data.draw(st.sampled_from([2, 3]), label="new axis"),)
    if kind == "broadcast_to new axis":
        # and its 1-axes stretched: summed along the innermost axis too
        shape = lead + tuple(data.draw(st.sampled_from([1, 3, 4]), label="stretch") if d == 1 else d for d in xs)
        return prog.record("broadcast_to", (x,), {"shape": shape}, lambda t: ad.broadcast_to(t, shape),
                           f"ad.broadcast_to({name}, {shape!r})")
    if kind == "where new axis":
        y = prog.leaf(lead + xs)
        cond = data.draw(hnp.arrays(np.bool_, lead + xs), label="cond")
        prog.line(f"cond = {src_array(cond.astype(np.uint8))}.astype(bool)")
        return prog.record("where", (x, y), {"cond": cond}, lambda p, q: ad.where(cond, p, q),
                           f"ad.where(cond, {name}, {prog.values[y].name})")
    if len(xs) < 2:
        return None
    a = prog.leaf(lead + xs[:-2] + (data.draw(DIM, label="rows"), xs[-2]))
    return prog.record("matmul", (a, x), {}, lambda p, q: p @ q if isinstance(p, ad.Tensor) else ad.matmul(p, q),
                       f"ad.matmul({prog.values[a].name}, {name})")


@_settings(smoke=150)
@given(data=st.data())
def test_fan_out_through_every_family(data):
    dtype = data.draw(st.sampled_from([F32, F64]), label="dtype")
    prog = Program(data, dtype)
    try:
        base = prog.leaf(draw_shape(data, min_ndim=1, max_ndim=4), constant="grad")
        if data.draw(st.booleans(), label="interior"):
            # an interior value: its adjoint is a buffer of the sweep, not a .grad
            base = prog.step(x=base, kind=data.draw(st.sampled_from(["unary", "scalar", "binary"]))) or base
        # distinct families, each as likely first (swept last: the contribution that must add) as last
        consumers = data.draw(st.permutations(FAMILIES), label="consumers")[:data.draw(st.integers(2, 4))]
        outs = []
        for kind in consumers:
            i = broadcasting_consumer(prog, base, kind) if "new" in kind else prog.step(x=base, kind=kind)
            if i is not None and prog.values[i].requires_grad:
                outs.append(i)
                event(f"consumer {kind}")
        if len(outs) < 2:
            return
        root = None
        for i in outs:
            name = prog.values[i].name
            # a scalar sum or mean hands its input one adjoint value (sweep.c, pass_uniform)
            red = data.draw(st.sampled_from(["sum", "mean"]), label="reduction")
            s = prog.record(red, (i,), {"axis": None, "keepdims": False}, getattr(ad, red), f"ad.{red}({name})")
            if root is None:
                root = s
            else:
                a, b = prog.values[root].name, prog.values[s].name
                root = prog.record("add", (root, s), {}, lambda p, q: p + q, f"{a} + {b}")
        check_backward(data, prog, root)
    except BaseException:
        note("Reproducer:\n" + "\n".join(prog.source))
        raise


# ---- nested transforms against differences of the lower order -------------------------------

SMOOTH_UNARY = ["tanh", "sin", "cos", "sigmoid", "softplus", "arctan", "square", "silu", "erf"]
SHAPES = [(), (3,), (4,), (2, 3), (2, 2)]


def draw_smooth_program(data, x):
    """A list of steps (kind, operands, parameters) over the values [x, ...], smooth in x, drawn
    by running it on x (so every step fits its operands' shapes), and constants for it."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    vals, steps = [x], []
    for _ in range(data.draw(st.integers(1, 5), label="steps")):
        i = data.draw(st.integers(0, len(vals) - 1), label="operand")
        v = vals[i]
        same = [j for j, u in enumerate(vals) if u.shape == v.shape]
        kinds = ["unary", "unary", "binary", "binary", "where", "concat"]
        if v.ndim:
            kinds += ["reduce", "softmax", "matmul", "layout", "getitem"]
        kind = data.draw(st.sampled_from(kinds), label="kind")
        if kind == "unary":
            step = (kind, (i,), {"op": data.draw(st.sampled_from(SMOOTH_UNARY), label="op")})
        elif kind in ("binary", "where", "concat"):
            j = data.draw(st.sampled_from(same), label="second operand")   # i itself now and then
            p = {"op": data.draw(st.sampled_from(["add", "subtract", "multiply"]), label="op"),
                 "cond": rng.random(v.shape) < 0.5,
                 "stack": v.ndim == 0 or data.draw(st.booleans(), label="stack")}   # 0-d: stack only
            step = (kind, (i, j), p)
        elif kind == "reduce":
            step = (kind, (i,), {"op": data.draw(st.sampled_from(["sum", "mean"])),
                                 "axis": data.draw(st.integers(-v.ndim, v.ndim - 1), label="axis"),
                                 "keepdims": data.draw(st.booleans(), label="keepdims")})
        elif kind == "softmax":
            step = (kind, (i,), {"op": data.draw(st.sampled_from(["softmax", "log_softmax", "logsumexp"])),
                                 "axis": data.draw(st.integers(-v.ndim, v.ndim - 1), label="axis")})
        elif kind == "matmul":
            form = "self" if v.ndim == 2 and data.draw(st.booleans(), label="x @ x.T") else "const"
            step = (kind, (i,), {"form": form, "c": rng.uniform(-1, 1, (v.shape[-1], 2))})
        elif kind == "layout":
            step = (kind, (i,), {"form": data.draw(st.sampled_from(["transpose", "flatten", "broadcast"]))})
        else:
            n = v.shape[0]
            idx = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4)) if n else [], np.int64)
            step = (kind, (i,), {"index": idx if n and data.draw(st.booleans()) else slice(None, None, -1)})
        steps.append(step)
        vals.append(apply_step(step, vals))
    weights = [rng.uniform(-1, 1, u.shape) for u in vals[1:]]
    return steps, weights


def apply_step(step, vals):
    kind, ins, p = step
    v = vals[ins[0]]
    if kind == "unary":
        return getattr(ad, p["op"])(v)
    if kind == "binary":
        return getattr(ad, p["op"])(v, vals[ins[1]])
    if kind == "where":
        return ad.where(p["cond"], v, vals[ins[1]])
    if kind == "concat":
        return (ad.stack if p["stack"] else ad.concatenate)([v, vals[ins[1]]], axis=0)
    if kind == "reduce":
        return getattr(ad, p["op"])(v, axis=p["axis"], keepdims=p["keepdims"])
    if kind == "softmax":
        return getattr(ad, p["op"])(v, axis=p["axis"])
    if kind == "matmul":
        return v @ ad.transpose(v) if p["form"] == "self" else v @ ad.tensor(p["c"])
    if kind == "layout":
        return {"transpose": ad.transpose, "flatten": lambda t: ad.reshape(t, (-1,)),
                "broadcast": lambda t: ad.broadcast_to(t, (2,) + t.shape)}[p["form"]](v)
    return v[p["index"]]


def smooth_function(steps, weights):
    """f(x) = sum over every value of the program of sum(w * value): every intermediate is
    consumed twice or more (by the next steps and by the loss)."""
    def f(x):
        vals = [x]
        for step in steps:
            vals.append(apply_step(step, vals))
        total = None
        for v, w in zip(vals[1:], weights):
            term = ad.sum(v * w)
            total = term if total is None else total + term
        return total
    return f


def _close(actual, expected, what):
    expected = np.asarray(expected, np.float64)
    # central differences with h ~ 6e-6: truncation ~h^2 |f'''|, round-off ~1e-16 |f'| / h
    atol = 2e-5 * (1 + np.abs(expected).max(initial=0))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=2e-5, atol=atol, err_msg=what)


@_settings(smoke=25)
@given(data=st.data())
def test_nested_transforms_match_differences_of_the_lower_order(data):
    shape = data.draw(st.sampled_from(SHAPES), label="shape")
    x0 = np.asarray(data.draw(st.lists(st.floats(-1.5, 1.5), min_size=int(np.prod(shape)),
                                       max_size=int(np.prod(shape))), label="x"), np.float64).reshape(shape)
    steps, weights = draw_smooth_program(data, ad.tensor(x0))
    note(f"x = {x0!r}\nsteps = {steps!r}")
    f = smooth_function(steps, weights)
    n = x0.size
    grad = ad.grad(f)
    g = grad(x0).numpy()
    _close(g, numerical_grad(f, x0), "grad against differences of f")
    # the lower order, differenced: column j of the Hessian from grad at x +- h e_j
    H = numerical_jacobian(lambda t: grad(t), x0).reshape(n, n)
    rng = np.random.default_rng(n)
    v, u = rng.uniform(-1, 1, shape), rng.uniform(-1, 1, shape)
    route = data.draw(st.sampled_from(["all", "hessian", "jacfwd(jacrev)", "grad(grad)", "jvp(grad)", "hvp"]),
                      label="route")
    event(f"route {route}")
    if route in ("all", "hessian"):
        _close(ad.hessian(f)(x0).numpy().reshape(n, n), H, "hessian")
    if route in ("all", "jacfwd(jacrev)"):
        _close(ad.jacfwd(ad.jacrev(f))(x0).numpy().reshape(n, n), H, "jacfwd(jacrev)")
    if route in ("all", "grad(grad)"):
        gg = ad.grad(lambda t: ad.sum(grad(t) * u))(x0).numpy()
        _close(gg.reshape(n), H.T @ u.reshape(n), "grad of <grad, u>")
    if route in ("all", "jvp(grad)"):
        g_primal, tangent = ad.jvp(grad, (x0,), (v,))
        _close(g_primal.numpy(), g, "jvp(grad)'s primal")
        _close(tangent.numpy().reshape(n), H @ v.reshape(n), "jvp of grad")
    if route in ("all", "hvp"):
        _, (hv,) = ad.hvp(f, (x0,), (v,))
        _close(hv.numpy().reshape(n), H @ v.reshape(n), "hvp")


# ---- traced replay against eager ----------------------------------------------------------------

@_settings(smoke=40)
@given(data=st.data())
def test_replayed_programs_equal_eager_bit_for_bit(data):
    """ad.record of a random program replays, at the recorded input and at a new one, the value
    and gradient eager ad.value_and_grad gives, bit for bit (the unfused replay runs the same
    kernels in the same order, the fused one too per element; README "Record once, replay")."""
    shape = data.draw(st.sampled_from(SHAPES), label="shape")
    dtype = data.draw(st.sampled_from([np.float64, np.float32]), label="dtype")
    size = int(np.prod(shape))
    xs = [np.asarray(data.draw(st.lists(st.floats(-1.5, 1.5), min_size=size, max_size=size), label=f"x{i}"),
                     np.float64).reshape(shape).astype(dtype) for i in range(2)]
    steps, weights = draw_smooth_program(data, ad.tensor(xs[0]))
    weights = [w.astype(dtype) for w in weights]
    note(f"x = {xs!r}\nsteps = {steps!r}")
    f = smooth_function(steps, weights)
    # and fused from one element on (csrc/fusion.c: these shapes are far below the default), which
    # must not change a bit either
    for tf in (ad.record(f, xs[0]), ad.record(f, xs[0], fuse=1)):
        for x in xs:
            value, grad = tf.value_and_grad(x)
            eager_value, eager_grad = ad.value_and_grad(f)(x)
            assert value.dtype == eager_value.dtype and grad.dtype == eager_grad.dtype
            assert value.numpy().tobytes() == eager_value.numpy().tobytes()
            assert grad.numpy().tobytes() == eager_grad.numpy().tobytes()


# ---- in-place update sequences against NumPy and the version counters ------------------------

STALE = "modified by an in-place operation"
# recorded graphs over the parameter w and the plain tensor t: which of them a rule reads (the
# version check's business), and d/dw of sum(C * y) from the values at recording time
GRAPHS = {
    "w * t": (("w", "t"), lambda w, t: w * t, lambda W, T, C: T * C),
    "w + t": ((), lambda w, t: w + t, lambda W, T, C: C),
    "exp(w)": ((), lambda w, t: ad.exp(w), lambda W, T, C: np.exp(W) * C),         # exp reads its output
    "tanh(w) * t": (("t",), lambda w, t: ad.tanh(w) * t, lambda W, T, C: (1 - np.tanh(W) ** 2) * T * C),
    "w * w": (("w",), lambda w, t: w * w, lambda W, T, C: 2 * W * C),
    "sum(w[1:]) * t": (("t",), lambda w, t: ad.sum(w[1:]) * t,
                       lambda W, T, C: np.concatenate([[0.0], np.full(W.size - 1, np.sum(T * C))])),
}
EXACT = [0.5, -1.0, 2.0, 1.25, -0.75]     # scalars exact in float32: the same sums both sides


@_settings(smoke=60)
@given(data=st.data())
def test_in_place_sequences_match_numpy_and_the_version_counters(data):
    dtype = data.draw(st.sampled_from([F32, F64]), label="dtype")
    n = data.draw(st.integers(2, 5), label="size")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    W, T = rng.uniform(-1, 1, n).astype(dtype), rng.uniform(-1, 1, n).astype(dtype)
    w, t = ad.tensor(W.copy(), requires_grad=True), ad.tensor(T.copy())
    G = None                               # the mirror of w.grad
    versions = {"w": 0, "t": 0}
    graphs = []                            # (root, {name: version read}, expected d/dw)
    tol = dict(rtol=4e-7, atol=4e-7) if dtype == F32 else dict(rtol=1e-15, atol=1e-15)
    log = []
    for _ in range(data.draw(st.integers(4, 16), label="actions")):
        action = data.draw(st.sampled_from(["record", "t+=", "backward", "w step", "t[]=", "record", "t*=",
                                            "backward", "t.sub_", "record", "w refuses", "backward", "t.clamp_",
                                            "zero_grad"]), label="action")
        log.append(action)
        note(f"action {action}")
        event(f"action {action}")
        if action == "t+=":
            c = data.draw(st.sampled_from(EXACT), label="c")
            if data.draw(st.booleans(), label="array"):
                c = rng.uniform(-1, 1, n).astype(dtype)
            t += c
            T = (T + c).astype(dtype)
        elif action == "t*=":
            c = data.draw(st.sampled_from(EXACT), label="c")
            t *= c
            T = (T * np.asarray(c, dtype)).astype(dtype)
        elif action == "t[]=":
            index = data.draw(st.sampled_from([0, -1, slice(1, None), slice(None, None, 2),
                                               np.array([0, n - 1, 0])]), label="index")
            value = data.draw(st.sampled_from(EXACT), label="value")
            t[index] = value
            T[index] = value
        elif action == "t.sub_":
            other, alpha = rng.uniform(-1, 1, n).astype(dtype), data.draw(st.sampled_from(EXACT), label="alpha")
            t.sub_(other, alpha=alpha)
            T = (T.astype(np.float64) - alpha * other.astype(np.float64)).astype(dtype)
        elif action == "t.clamp_":
            t.clamp_(-0.5, 0.5)
            T = np.clip(T, dtype.type(-0.5), dtype.type(0.5))
        elif action == "w step":
            # the optimizer's kind of update: under no_grad, by the gradient (or a fixed step)
            lr = data.draw(st.sampled_from([0.5, 0.25]), label="lr")
            step = G if G is not None else np.ones(n, dtype)
            with ad.no_grad():
                w -= (w.grad if w.grad is not None else ad.ones(n, dtype=dtype)) * lr
            W = (W - (step * np.asarray(lr, dtype)).astype(dtype)).astype(dtype)
            versions["w"] += 1
            if data.draw(st.booleans(), label="then zero"):
                w.grad = None
                G = None
        elif action == "w refuses":
            # grad mode on: a leaf that requires grad takes no update, and nothing changes
            with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
                w += 1.0
        elif action == "record":
            form = data.draw(st.sampled_from(sorted(GRAPHS)), label="graph")
            reads, build, expected = GRAPHS[form]
            C = rng.uniform(-1, 1, n).astype(dtype)
            root = ad.sum(build(w, t) * C)
            graphs.append((root, {k: versions[k] for k in reads}, expected(W.astype(np.float64), T.astype(np.float64),
                                                                            C.astype(np.float64)), form))
        elif action == "backward" and graphs:
            root, read, expected, form = graphs.pop(data.draw(st.integers(0, len(graphs) - 1), label="graph"))
            stale = [k for k, v in read.items() if versions[k] != v]
            before = None if w.grad is None else w.grad.numpy().copy()
            if stale:
                event(f"stale {form}")
                with pytest.raises(RuntimeError, match=STALE):
                    root.backward()
                after = None if w.grad is None else w.grad.numpy()
                assert (before is None and after is None) or np.array_equal(before, after), \
                    "a refused backward changed .grad"
            else:
                root.backward()
                G = expected.astype(dtype) if G is None else (G + expected).astype(dtype)
        elif action == "zero_grad" and w.grad is not None:
            w.grad.zero_()
            G = np.zeros(n, dtype)
        # every value, after every action
        if action.startswith("t"):
            versions["t"] += 1
        np.testing.assert_allclose(t.numpy(), T, **tol, err_msg=f"t after {log}")
        np.testing.assert_allclose(w.numpy(), W, **tol, err_msg=f"w after {log}")
        if G is None:
            assert w.grad is None, f"w.grad after {log}"
        else:
            grad_tol = dict(rtol=2e-5, atol=2e-5) if dtype == F32 else dict(rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(w.grad.numpy(), G, **grad_tol, err_msg=f"w.grad after {log}")
        assert (w._version, t._version) == (versions["w"], versions["t"]), f"versions after {log}"
