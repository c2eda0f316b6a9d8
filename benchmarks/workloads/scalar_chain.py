"""scalar_chain: 10,000 scalar ops on 0-d tensors, forward + backward; cost per op.

The chain repeats five ops, v <- log(exp(tanh((v + a) * b))), so every op of the spec (add, mul,
tanh, exp, log) appears equally often and values stay in (-1, 1) however long the chain is.
Leaves: a and b. The graph is as deep as it is long, so this also exercises deep backward sweeps.
"""

import math

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "scalar_chain"
TITLE = "10,000 scalar ops (add, mul, tanh, exp, log) on 0-d tensors"
PER_OP = True
HAND_LABEL = "hand-written (Python floats)"
LEAVES = ["a", "b"]
ISOLATED = {"jax_jit"}  # tracing and compiling a 10,000-op XLA graph: capped in a child process
CHILD_TIMEOUT_S = {"jax_jit": (15.0, 10.0)}  # (full, quick): trace + compile is capped
SKIP_IN_QUICK = {"jax_jit": "skipped in --quick: tracing and compiling a scalar graph takes "
                            "seconds (the full run caps it at 15 s)"}
NOT_APPLICABLE = {}
TARGETS = common.SCALAR_TARGETS
NOTES = [
    "The hand-written baseline is a Python-float forward with the derivative of each op written "
    "out in a reverse loop (math.tanh/exp/log): the interpreter floor for one scalar op with no "
    "AD machinery at all.",
    "micrograd 0.1.0 ships only +, *, ** and relu; tanh, exp and log are added as functions in "
    "micrograd's own closure style (a node plus a _backward that accumulates with +=).",
]


def size(quick):
    return {"ops": 1_000 if quick else 10_000}


def n_ops(size):
    return size["ops"]


def make_data(size):
    return {"a": 0.5, "b": 0.9, "groups": size["ops"] // 5}


def build_numpy(data, size):
    a, b, groups = data["a"], data["b"], data["groups"]
    tanh, exp, log = math.tanh, math.exp, math.log

    def step():
        saved = []
        v = a
        for _ in range(groups):
            u = v + a
            m = u * b
            t = tanh(m)
            e = exp(t)
            v = log(e)
            saved.append((u, t, e))
        grad_a = grad_b = 0.0
        grad_v = 1.0
        for u, t, e in reversed(saved):
            grad_t = grad_v / e * e  # through log (1/e), then exp (e)
            grad_m = grad_t * (1.0 - t * t)
            grad_b += grad_m * u
            grad_u = grad_m * b
            grad_a += grad_u
            grad_v = grad_u
        grad_a += grad_v  # the chain starts at v = a
        return v, grad_a, grad_b

    def grads(out):
        v, grad_a, grad_b = out
        return v, [common.f64(grad_a), common.f64(grad_b)]

    return Cell(step, grads)


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")
    a = ad.tensor(data["a"], requires_grad=True)
    b = ad.tensor(data["b"], requires_grad=True)
    tanh, exp, log = ad.tanh, ad.exp, ad.log
    groups = data["groups"]

    def step():
        a.grad = None
        b.grad = None
        v = a
        for _ in range(groups):
            v = log(exp(tanh((v + a) * b)))
        v.backward()
        return v

    def grads(v):
        return v.item(), [a.grad.numpy(), b.grad.numpy()]

    return Cell(step, grads)


def build_torch(data, size):
    torch = peers.load("torch")
    a = torch.tensor(data["a"], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(data["b"], dtype=torch.float64, requires_grad=True)
    tanh, exp, log = torch.tanh, torch.exp, torch.log
    groups = data["groups"]

    def step():
        a.grad = None
        b.grad = None
        v = a
        for _ in range(groups):
            v = log(exp(tanh((v + a) * b)))
        v.backward()
        return v

    def grads(v):
        return v.item(), [a.grad.numpy(), b.grad.numpy()]

    return Cell(step, grads)


def _jax_loss(data):
    jnp = peers.load("jax").numpy
    groups = data["groups"]

    def loss(a, b):
        v = a
        for _ in range(groups):
            v = jnp.log(jnp.exp(jnp.tanh((v + a) * b)))
        return v

    return loss


def build_jax(data, size):
    jax = peers.load("jax")
    value_and_grad = jax.value_and_grad(_jax_loss(data), argnums=(0, 1))
    a, b = jax.numpy.float64(data["a"]), jax.numpy.float64(data["b"])
    return Cell(lambda: value_and_grad(a, b), common.jax_grads, sync=jax.block_until_ready)


def build_jax_jit(data, size):
    jax = peers.load("jax")
    a, b = jax.numpy.float64(data["a"]), jax.numpy.float64(data["b"])
    value_and_grad = jax.value_and_grad(_jax_loss(data), argnums=(0, 1))
    compiled, compile_s = common.jax_compile(jax, value_and_grad, a, b)
    return Cell(lambda: compiled(a, b), common.jax_grads, sync=jax.block_until_ready,
                compile_s=compile_s)


def build_autograd(data, size):
    autograd = peers.load("autograd")
    anp = common.autograd_numpy()
    groups = data["groups"]

    def loss(a, b):
        v = a
        for _ in range(groups):
            v = anp.log(anp.exp(anp.tanh((v + a) * b)))
        return v

    value_and_grad = autograd.value_and_grad(loss, argnum=(0, 1))
    a, b = data["a"], data["b"]

    def grads(out):
        value, (grad_a, grad_b) = out
        return float(value), [common.f64(grad_a), common.f64(grad_b)]

    return Cell(lambda: value_and_grad(a, b), grads)


def build_micrograd(data, size):
    Value = common.micrograd_engine().Value
    tanh, exp, log = common.micrograd_unary(Value)
    groups = data["groups"]
    a, b = Value(data["a"]), Value(data["b"])
    depth = 5 * groups + 2

    def step():
        a.grad = 0
        b.grad = 0
        v = a
        for _ in range(groups):
            v = log(exp(tanh((v + a) * b)))
        common.micrograd_backward(v, depth)
        return v

    def grads(v):
        return v.data, [common.f64(a.grad), common.f64(b.grad)]

    return Cell(step, grads, note=common.micrograd_recursion_note(Value, depth))


BUILDERS = common.builders(globals())
