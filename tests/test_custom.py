"""Custom functions (custom_vjp, custom_jvp, Function), hooks, retain_grad, grad_fn, the DOT picture
and checkpointing: against analytic derivatives and finite differences, inside every transform,
with strict errors, and with exceptions that leave the graph and .grad as they were."""
import gc
import re
import threading

import numpy as np
import pytest

import pyautodiff as ad

X = np.array([0.3, -0.7, 1.1])


# ---- three spellings of one function, f(x) = 2 sin(x) * x, with its own rules ----

def _value(x):
    return 2 * ad.sin(x) * x


def _deriv(x):           # f'(x)
    return 2 * ad.cos(x) * x + 2 * ad.sin(x)


def _second(x):          # f''(x), for the Hessian checks
    return -2 * np.sin(x) * x + 4 * np.cos(x)


@ad.custom_vjp
def f_vjp(x):
    return _value(x)


def _fwd(x):
    return f_vjp(x), (x,)


def _bwd(res, g):
    (x,) = res
    return (g * _deriv(x),)


f_vjp.defvjp(_fwd, _bwd)


@ad.custom_jvp
def f_jvp(x):
    return _value(x)


@f_jvp.defjvp
def _f_jvp_rule(primals, tangents):
    (x,), (t,) = primals, tangents
    return f_jvp(x), _deriv(x) * t


class FFunction(ad.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _value(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * _deriv(x)


SPELLINGS = {"custom_vjp": f_vjp, "custom_jvp": f_jvp, "Function": FFunction.apply}


def _fprime(x):
    return 2 * np.cos(x) * x + 2 * np.sin(x)


@pytest.mark.parametrize("kind", SPELLINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_first_order_in_every_transform(kind, dtype):
    f = SPELLINGS[kind]
    x = X.astype(dtype)
    tol = dict(rtol=1e-5 if dtype == np.float32 else 1e-12)
    want = _fprime(x.astype(np.float64))
    t = ad.tensor(x, requires_grad=True)
    f(t).sum().backward()
    assert t.grad.dtype == dtype
    np.testing.assert_allclose(t.grad.numpy(), want, **tol)
    np.testing.assert_allclose(ad.grad(lambda v: f(v).sum())(x).numpy(), want, **tol)
    np.testing.assert_allclose(ad.jacrev(f)(x).numpy(), np.diag(want), **tol)
    np.testing.assert_allclose(ad.jacfwd(f)(x).numpy(), np.diag(want), **tol)
    _, tan = ad.jvp(f, (x,), (np.ones(3, dtype),))
    np.testing.assert_allclose(tan.numpy(), want, **tol)
    (g,) = ad.vjp(f, x)[1](np.ones(3, dtype))
    np.testing.assert_allclose(g.numpy(), want, **tol)


@pytest.mark.parametrize("kind", SPELLINGS)
def test_against_finite_differences(kind):
    f = SPELLINGS[kind]
    ad.gradcheck(lambda v: f(v), (X,))


@pytest.mark.parametrize("kind", SPELLINGS)
def test_higher_orders(kind):
    f = SPELLINGS[kind]
    want2 = _second(X)
    np.testing.assert_allclose(ad.hessian(lambda v: f(v).sum())(X).numpy(), np.diag(want2), rtol=1e-12)
    gg = ad.grad(lambda v: ad.grad(lambda u: f(u).sum())(v).sum())(X)
    np.testing.assert_allclose(gg.numpy(), want2, rtol=1e-12)
    np.testing.assert_allclose(ad.jacfwd(ad.jacrev(f))(X).numpy()[[0, 1, 2], [0, 1, 2], [0, 1, 2]], want2,
                               rtol=1e-12)
    _, (hv,) = ad.hvp(lambda v: f(v).sum(), (X,), (np.ones(3),))
    np.testing.assert_allclose(hv.numpy(), want2, rtol=1e-12)
    # backward(create_graph=True): the custom rule is recorded, so it differentiates again
    t = ad.tensor(X, requires_grad=True)
    f(t).sum().backward(create_graph=True)
    g = t.grad
    t.grad = None
    g.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), want2, rtol=1e-12)


def test_custom_rule_is_used_not_the_forward():
    # a deliberately different rule: the gradient must be the rule's numbers (the famous
    # clip-gradient idiom), proving the sweep went through the custom node and not through f's ops
    @ad.custom_vjp
    def clip_grad(x):
        return x * 1.0

    clip_grad.defvjp(lambda x: (clip_grad(x), None), lambda res, g: (ad.clip(g, -0.5, 0.5),))
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    (clip_grad(x) * np.array([3.0, 0.1])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.5, 0.1])


def test_numerically_stable_rule():
    # log(1 + exp(x)) with the stable derivative sigmoid(x): finite where the naive one overflows
    @ad.custom_jvp
    def softplus(x):
        return ad.logaddexp(x, 0.0 * x)

    @softplus.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return softplus(x), ad.sigmoid(x) * t

    g = ad.grad(lambda v: softplus(v).sum())(np.array([-800.0, 0.0, 800.0]))
    np.testing.assert_allclose(g.numpy(), [0.0, 0.5, 1.0])


def test_pytrees_and_nondiff_argnums():
    @ad.custom_vjp
    def scaled(k, p):
        return {"y": p["a"] * k, "z": p["b"].sum() * k}

    def fwd(k, p):
        return scaled(k, p), None

    def bwd(k, res, g):
        return ({"a": g["y"] * k, "b": ad.broadcast_to(g["z"] * k, (2,))},)

    scaled = ad.custom_vjp(scaled.fun, nondiff_argnums=(0,)).defvjp(fwd, bwd)
    p = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    g = ad.grad(lambda q: scaled(3.0, q)["y"].sum() + 2 * scaled(3.0, q)["z"])(p)
    np.testing.assert_allclose(g["a"].numpy(), [3.0, 3.0])
    np.testing.assert_allclose(g["b"].numpy(), [6.0, 6.0])


class TwoOut(ad.Function):
    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x * y, x + y

    @staticmethod
    def backward(ctx, g1, g2):
        x, y = ctx.saved_tensors
        return g1 * y + g2, g1 * x + g2


def test_function_with_two_outputs_and_saved_output():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = ad.tensor([3.0, 5.0], requires_grad=True)
    p, s = TwoOut.apply(x, y)
    (2 * p + 3 * s).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * y.numpy() + 3)
    np.testing.assert_allclose(y.grad.numpy(), 2 * x.numpy() + 3)

    class Exp(ad.Function):
        @staticmethod
        def forward(ctx, v):
            out = ad.exp(v)
            ctx.save_for_backward(out)      # an output: reached through the node, never held
            return out

        @staticmethod
        def backward(ctx, g):
            (out,) = ctx.saved_tensors
            return g * out

    v = np.array([0.0, 1.0])
    np.testing.assert_allclose(ad.hessian(lambda u: Exp.apply(u).sum())(v).numpy(), np.diag(np.exp(v)))
    before = ad.tape_stats()["live_nodes"]
    for _ in range(50):
        t = ad.tensor(v, requires_grad=True)
        Exp.apply(t).sum().backward()
        del t
    assert ad.tape_stats()["live_nodes"] == before     # no cycle through the saved output


def test_function_jvp_staticmethod_is_used():
    class Sq(ad.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

        @staticmethod
        def jvp(ctx, t):
            (x,) = ctx.saved_tensors
            return 10 * x * t       # deliberately not 2x: forward mode must use this rule

    _, tan = ad.jvp(Sq.apply, (np.array([1.0, 2.0]),), (np.ones(2),))
    np.testing.assert_allclose(tan.numpy(), [10.0, 20.0])


# ---- strict checks and errors ----

def test_wrong_gradient_shape_and_dtype_are_errors_naming_the_function():
    @ad.custom_vjp
    def bad(x):
        return x * 2

    bad.defvjp(lambda x: (bad(x), None), lambda res, g: (g.sum(),))
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"bad: the gradient for input 0 has shape \(\), but input 0 has shape \(2,\)"):
        bad(x).sum().backward()

    bad.defvjp(lambda x: (bad(x), None), lambda res, g: (g.astype(np.float32),))
    with pytest.raises(TypeError, match=r"bad: .*dtype float32 \(shape \(2,\)\), but input 0 has dtype float64"):
        bad(x).sum().backward()
    assert x.grad is None


def test_exception_in_backward_leaves_graph_and_grads_unchanged():
    calls = []

    class Boom(ad.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 3

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            if len(calls) == 1:
                raise KeyError("boom")
            return g * 3

    w = ad.tensor([1.0, 2.0], requires_grad=True)
    w.grad = np.array([10.0, 20.0])
    x = ad.tensor([0.5, 0.25], requires_grad=True)
    # w's contribution is swept before the custom node fails: it must not reach w.grad
    loss = (Boom.apply(x) * 2 + w * w).sum()
    with pytest.raises(KeyError, match="boom") as info:
        loss.backward()
    assert any("Boom" in n for n in getattr(info.value, "__notes__", []))
    np.testing.assert_array_equal(w.grad.numpy(), [10.0, 20.0])
    assert x.grad is None
    loss.backward()        # the graph is intact: a second try works and adds once
    np.testing.assert_array_equal(w.grad.numpy(), [12.0, 24.0])
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])


def test_backward_inside_a_rule_is_refused():
    class Nested(ad.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1

        @staticmethod
        def backward(ctx, g):
            y = ad.tensor([1.0], requires_grad=True)
            (y * 2).sum().backward()
            return g

    x = ad.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="backward: called from a custom function's rule or a hook"):
        Nested.apply(x).sum().backward()


def test_custom_vjp_without_rule_and_untransposable_rule():
    @ad.custom_vjp
    def norule(x):
        return x

    with pytest.raises(TypeError, match="norule: custom_vjp function has no rule"):
        norule(ad.tensor([1.0], requires_grad=True))

    @ad.custom_vjp
    def leaves_tape(x):
        return x * 2

    # a backward that goes through NumPy cannot be transposed for forward mode: an error, not zeros
    leaves_tape.defvjp(lambda x: (leaves_tape(x), None), lambda res, g: (np.asarray(g) * 2,))
    with pytest.raises(TypeError, match="leaves_tape: its backward rule's result does not depend"):
        ad.jacfwd(leaves_tape)(np.array([1.0, 2.0]))
    np.testing.assert_allclose(ad.jacrev(leaves_tape)(np.array([1.0, 2.0])).numpy(), 2 * np.eye(2))


def test_no_recording_calls_the_plain_function():
    with ad.no_grad():
        y = f_vjp(ad.tensor(X, requires_grad=True))
    assert not y.requires_grad
    np.testing.assert_allclose(y.numpy(), 2 * np.sin(X) * X)


def test_threads_each_run_their_own_custom_functions():
    results, errors = {}, []

    def work(i):
        try:
            x = ad.tensor(X * (i + 1), requires_grad=True)
            for _ in range(20):
                x.grad = None
                (f_vjp(x) + FFunction.apply(x)).sum().backward()
            results[i] = x.grad.numpy()
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        np.testing.assert_allclose(results[i], 2 * _fprime(X * (i + 1)), rtol=1e-12)


# ---- hooks, retain_grad, grad_fn ----

def test_hooks_order_replacement_and_removal():
    seen = []
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    h1 = y.register_hook(lambda g: seen.append(("first", g.numpy().tolist())))
    y.register_hook(lambda g: g * 10)
    y.register_hook(lambda g: seen.append(("third", g.numpy().tolist())))
    (y * np.array([1.0, 2.0])).sum().backward(retain_graph=True)
    assert seen == [("first", [1.0, 2.0]), ("third", [10.0, 20.0])]
    np.testing.assert_array_equal(x.grad.numpy(), [30.0, 60.0])
    h1.remove()
    h1.remove()
    seen.clear()
    x.grad = None
    (y * np.array([1.0, 2.0])).sum().backward()
    assert seen == [("third", [10.0, 20.0])]
    np.testing.assert_array_equal(x.grad.numpy(), [30.0, 60.0])


def test_leaf_hook_runs_before_grad_accumulates_and_in_transforms():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    x.register_hook(lambda g: g * 0.5)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0])
    (g,) = ad.autograd.grad((x * x).sum(), x)
    np.testing.assert_array_equal(g.numpy(), [1.0, 2.0])
    (g,) = ad.autograd.grad((x * x).sum(), x, create_graph=True)
    np.testing.assert_array_equal(g.numpy(), [1.0, 2.0])


def test_hook_with_wrong_shape_is_an_error():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.register_hook(lambda g: g.sum())
    with pytest.raises(ValueError, match=r"hook <lambda>: its returned gradient has shape \(\), but the gradient"):
        y.sum().backward()
    assert x.grad is None


def test_retain_grad_on_intermediates():
    x = ad.tensor([1.0, 2.0], requires_grad=True)
    h = x * x
    h.retain_grad()
    y = ad.tanh(h)
    y.retain_grad()
    y.sum().backward(retain_graph=True)
    np.testing.assert_array_equal(y.grad.numpy(), [1.0, 1.0])
    np.testing.assert_allclose(h.grad.numpy(), 1 - np.tanh(x.numpy() ** 2) ** 2)
    y.sum().backward()          # accumulates, as a leaf's grad does
    np.testing.assert_array_equal(y.grad.numpy(), [2.0, 2.0])
    z = x * 2
    z.retain_grad()
    ad.autograd.grad(z.sum(), x)        # autograd.grad leaves .grad alone
    assert z.grad is None


def test_grad_fn_and_is_leaf():
    w = ad.tensor(np.ones((2, 2)), requires_grad=True)
    x = ad.tensor(np.ones(2))
    y = ad.tanh(x @ w)
    assert w.is_leaf and not y.is_leaf and w.grad_fn is None
    assert y.grad_fn.name == "tanh"
    (mm, _), = y.grad_fn.next_functions
    assert mm.name == "matmul"
    nxt = mm.next_functions
    assert nxt[0] == (None, 0)                      # x needs no gradient
    assert nxt[1][0].name == "AccumulateGrad" and nxt[1][0].variable is not None
    np.testing.assert_array_equal(nxt[1][0].variable.numpy(), w.numpy())
    assert FFunction.apply(ad.tensor(X, requires_grad=True)).grad_fn.name == "FFunction"
    y.sum().backward()
    with pytest.raises(RuntimeError, match="released by backward"):
        y.grad_fn.next_functions


# ---- the graph as DOT ----

def _parse_dot(text):
    nodes = dict(re.findall(r'^\s*(n\d+) \[label="([^"]*)"', text, re.M))
    edges = re.findall(r"^\s*(n\d+) -> (n\d+);", text, re.M)
    return nodes, edges


def test_to_dot_matches_the_tape():
    gc.collect()    # cyclic garbage from earlier tests, collected mid-test, would shift the count
    base = ad.tape_stats()["live_nodes"]
    w = ad.tensor(np.ones((3, 4)), requires_grad=True)
    b = ad.tensor(np.zeros(4, np.float32), requires_grad=True)
    x = ad.tensor(np.ones((2, 3)))
    loss = FFunction.apply(ad.tanh(x @ w + b)).sum()
    text = ad.viz.to_dot(loss, params={"w": w, "b": b})
    nodes, edges = _parse_dot(text)
    # every live node of this graph appears once: w, b, x, matmul, b cast to float64, add, tanh,
    # FFunction, sum
    assert len(nodes) == ad.tape_stats()["live_nodes"] - base == 9
    labels = sorted(lbl.split("\\n")[0] for lbl in nodes.values())
    assert labels == sorted(["w", "b", "constant", "matmul", "cast", "add", "tanh", "FFunction", "sum"])
    assert len(edges) == 8
    by_name = {lbl.split("\\n")[0]: n for n, lbl in nodes.items()}
    assert (by_name["w"], by_name["matmul"]) in edges and (by_name["FFunction"], by_name["sum"]) in edges
    assert "(3, 4) float64" in nodes[by_name["w"]] and "(4,) float32" in nodes[by_name["b"]]
    held = dict(re.findall(r"^\s*(n\d+) \[.*bytes=(\d+)\];", text, re.M))
    # w (3, 4) and x (2, 3), both float64 leaves: their records are alike, their values 48 B apart
    assert int(held[by_name["w"]]) - int(held[by_name["constant"]]) == (12 - 6) * 8


def test_render_without_graphviz_says_what_to_install(tmp_path, monkeypatch):
    import builtins
    import shutil
    real_import = builtins.__import__

    def no_graphviz(name, *a, **k):
        if name == "graphviz":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_graphviz)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    x = ad.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="needs the graphviz Python package or Graphviz's `dot` program"):
        ad.viz.render(x * 2, tmp_path / "g.svg")


# ---- checkpointing ----

def _mlp(n_layers, width, hidden, seed=0):
    rng = np.random.default_rng(seed)
    return [(ad.tensor(rng.normal(size=(width, hidden)) / np.sqrt(width), requires_grad=True),
             ad.tensor(np.zeros(hidden), requires_grad=True),
             ad.tensor(rng.normal(size=(hidden, width)) / np.sqrt(hidden), requires_grad=True))
            for _ in range(n_layers)]


def _block(x, w1, b1, w2):
    return x + ad.tanh(x @ w1 + b1) @ w2


def _run(params, x, checkpointed):
    h = x
    for w1, b1, w2 in params:
        if checkpointed:
            h = ad.checkpoint(lambda v, w1=w1, b1=b1, w2=w2: _block(v, w1, b1, w2))(h)
        else:
            h = _block(h, w1, b1, w2)
    return (h * h).mean()


def test_checkpoint_saves_memory_with_the_same_gradients_bit_for_bit():
    x = ad.tensor(np.random.default_rng(1).normal(size=(512, 32)))
    params = _mlp(20, 32, 128)
    flat = [p for layer in params for p in layer]
    live = {}
    grads = {}
    for mode in (False, True):
        for p in flat:
            p.grad = None
        base = ad.tape_stats()["live_bytes"]
        loss = _run(params, x, mode)
        live[mode] = ad.tape_stats()["live_bytes"] - base
        loss.backward()
        grads[mode] = [p.grad.numpy() for p in flat]
        del loss
    assert live[True] <= live[False] / 3, live
    for a, b in zip(grads[False], grads[True]):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_composes_with_transforms():
    w = ad.tensor(np.array([[0.5, -1.0], [2.0, 0.3]]), requires_grad=True)

    def layer(v):
        return ad.sin(v @ w)

    def f(v, ck):
        return ((ad.checkpoint(layer) if ck else layer)(v) ** 2).sum()

    v = np.array([0.2, -0.4])
    for transform in (ad.grad, ad.hessian, lambda g: ad.grad(lambda u: ad.grad(g)(u).sum())):
        np.testing.assert_allclose(transform(lambda u: f(u, True))(v).numpy(),
                                   transform(lambda u: f(u, False))(v).numpy(), rtol=1e-12)
    # the closed-over parameter gets its gradient through the checkpoint
    f(ad.tensor(v), True).backward()
    g_ck = w.grad.numpy()
    w.grad = None
    f(ad.tensor(v), False).backward()
    np.testing.assert_array_equal(g_ck, w.grad.numpy())


# ---- module hooks and the demo's graph ----

def test_module_forward_and_full_backward_hooks():
    lin = ad.nn.Linear(3, 2, seed=0)
    w = lin.weight.numpy()
    seen = []
    fwd = lin.register_forward_hook(lambda m, inputs, out: out * 2)
    lin.register_full_backward_hook(
        lambda m, gi, go: seen.append((None if gi[0] is None else gi[0].numpy(), go[0].numpy())))
    x = ad.tensor(np.ones((4, 3)), requires_grad=True)
    lin(x).sum().backward()
    (gi, go), = seen
    np.testing.assert_array_equal(go, np.ones((4, 2)))        # d sum / d (hooked output)
    np.testing.assert_allclose(gi, 2 * np.ones((4, 2)) @ w)   # through the forward hook's * 2
    np.testing.assert_allclose(x.grad.numpy(), gi)
    fwd.remove()
    zero = lin.register_full_backward_hook(lambda m, gi, go: (gi[0] * 0,))    # replaces grad_input
    x.grad = None
    lin(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((4, 3)))
    assert len(seen) == 2
    zero.remove()
    # an input that needs no gradient: the hook still runs, with grad_input None
    lin(ad.tensor(np.ones((1, 3)))).sum().backward()
    assert len(seen) == 3 and seen[-1][0] is None
    np.testing.assert_array_equal(seen[-1][1], np.ones((1, 2)))


def test_demo_writes_its_graph(tmp_path):
    from pyautodiff import demo
    path = tmp_path / "model.dot"
    assert demo.main(["--epochs", "1", "--graph", str(path)]) == 0
    nodes, edges = _parse_dot(path.read_text())
    labels = [lbl.split("\\n")[0] for lbl in nodes.values()]
    assert labels.count("matmul") == 2 and "0.weight" in labels and "2.bias" in labels
    assert len(edges) >= len(nodes) - 1
