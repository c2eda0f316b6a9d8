"""micrograd_mlp: micrograd's classic demo step, every scalar a 0-d tensor.

A 2-16-16-1 MLP (ReLU hidden layers, linear output) on 100 two-moons points, SVM hinge loss
plus L2 regularisation (alpha = 1e-4), exactly as micrograd's demo notebook computes it; one
training step is the forward and the backward (the parameter update is 337 plain float
subtractions and is left out so every repeat sees the same parameters and gradients).

The model is written once, in ``scalar_loss``, over any scalar type with + and *; each
contestant supplies only its leaves, its relu and its backward, so all of them record exactly
the same sequence of ops. Leaves: the 337 weights and biases, in micrograd's parameters() order.
"""

import random

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "micrograd_mlp"
TITLE = "micrograd's 2-16-16-1 scalar MLP, 100 two-moons points, hinge loss"
PER_OP = True
HAND_LABEL = "hand-written (Python floats)"
LEAVES = ["the 337 weights and biases"]
ISOLATED = {"jax_jit"}  # a ~65,000-op XLA graph: capped in a child process
CHILD_TIMEOUT_S = {"jax_jit": (15.0, 10.0)}  # (full, quick): trace + compile is capped
SKIP_IN_QUICK = {"jax_jit": "skipped in --quick: tracing and compiling a scalar graph takes "
                            "seconds (the full run caps it at 15 s)"}
NOT_APPLICABLE = {}
TARGETS = common.SCALAR_TARGETS
ALPHA = 1e-4
NOTES = [
    "The hand-written baseline runs the same model on Python floats with the backward derived by "
    "hand (per point, layer by layer): the floor for a scalar graph with no AD machinery.",
    "Ops per step are counted by running the shared model code on a counting scalar type.",
]


def size(quick):
    return {"points": 4 if quick else 100, "layers": [2, 16, 16, 1]}


def make_moons(n, noise, seed):
    """sklearn.datasets.make_moons' construction, so sklearn is not needed."""
    generator = np.random.default_rng(seed)
    n_outer = n // 2
    n_inner = n - n_outer
    outer = np.linspace(0, np.pi, n_outer)
    inner = np.linspace(0, np.pi, n_inner)
    X = np.vstack([
        np.column_stack([np.cos(outer), np.sin(outer)]),
        np.column_stack([1 - np.cos(inner), 1 - np.sin(inner) - 0.5]),
    ])
    X += generator.normal(scale=noise, size=X.shape)
    y = np.concatenate([-np.ones(n_outer), np.ones(n_inner)])
    return X, y


def make_data(size):
    X, y = make_moons(size["points"], noise=0.1, seed=1)
    # Weights as micrograd's Neuron draws them: uniform(-1, 1), biases 0.
    draw = random.Random(1337)
    sizes = size["layers"]
    layers = [
        [([draw.uniform(-1, 1) for _ in range(n_in)], 0.0) for _ in range(n_out)]
        for n_in, n_out in zip(sizes[:-1], sizes[1:])
    ]
    return {"X": X.tolist(), "y": y.tolist(), "layers": layers}


def flatten(layers):
    """Parameters in micrograd's order: layer by layer, neuron by neuron, weights then bias."""
    return [p for layer in layers for w, b in layer for p in (*w, b)]


def map_params(layers, leaf):
    return [[([leaf(wi) for wi in w], leaf(b)) for w, b in layer] for layer in layers]


def scalar_loss(layers, X, y, relu):
    """micrograd's demo loss: mean hinge loss over the points plus alpha * sum of squares."""
    losses = []
    for x, yi in zip(X, y):
        activations = x
        for index, layer in enumerate(layers):
            nonlinear = index != len(layers) - 1
            outputs = []
            for w, b in layer:
                act = sum((wi * xi for wi, xi in zip(w, activations)), b)
                outputs.append(relu(act) if nonlinear else act)
            activations = outputs
        score = activations[0]
        losses.append(relu(1 + -yi * score))
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = ALPHA * sum(p * p for p in flatten(layers))
    return data_loss + reg_loss


class _Counting:
    """A scalar that counts the ops recorded on it, to normalise every contestant per op."""

    count = 0

    def _op(self, other):
        _Counting.count += 1
        return _Counting()

    __add__ = __radd__ = __mul__ = __rmul__ = _op


def n_ops(size):
    data = make_data(size)
    _Counting.count = 0
    scalar_loss(map_params(data["layers"], lambda v: _Counting()), data["X"], data["y"],
                relu=lambda v: v._op(None))
    return _Counting.count


def build_numpy(data, size):
    X, y, layers = data["X"], data["y"], data["layers"]
    last = len(layers) - 1

    def step():
        grads = [[([0.0] * len(w), [0.0]) for w, _ in layer] for layer in layers]
        n = len(X)
        data_loss = 0.0
        for x, yi in zip(X, y):
            inputs, pre = [], []
            a = x
            for index, layer in enumerate(layers):
                z = []
                for w, b in layer:
                    act = b
                    for wi, ai in zip(w, a):
                        act += wi * ai
                    z.append(act)
                inputs.append(a)
                pre.append(z)
                a = z if index == last else [v if v > 0 else 0.0 for v in z]
            margin = 1 + -yi * a[0]
            if margin <= 0:
                continue  # relu of the hinge is flat here: this point adds no gradient
            data_loss += margin
            grad_z = [-yi / n]
            for index in range(last, -1, -1):
                a = inputs[index]
                grad_a = [0.0] * len(a)
                for (w, _), (grad_w, grad_b), g in zip(layers[index], grads[index], grad_z):
                    if g == 0.0:
                        continue
                    grad_b[0] += g
                    for k, ak in enumerate(a):
                        grad_w[k] += g * ak
                        grad_a[k] += g * w[k]
                if index:
                    grad_z = [g if z > 0 else 0.0 for g, z in zip(grad_a, pre[index - 1])]
        params = flatten(layers)
        loss = data_loss / n + ALPHA * sum(p * p for p in params)
        flat = [g for layer in grads for grad_w, grad_b in layer for g in (*grad_w, grad_b[0])]
        return loss, [g + 2 * ALPHA * p for g, p in zip(flat, params)]

    def grads(out):
        loss, gradient = out
        return loss, [np.array(gradient)]

    return Cell(step, grads)


def _tensor_cell(data, make_leaf, relu, read_grad, clear, note=""):
    """The cell for PyTorch-like libraries: leaves with .grad, loss.backward()."""
    layers = map_params(data["layers"], make_leaf)
    params = flatten(layers)
    X, y = data["X"], data["y"]

    def step():
        for p in params:
            clear(p)
        loss = scalar_loss(layers, X, y, relu)
        loss.backward()
        return loss

    def grads(loss):
        return loss.item(), [np.array([read_grad(p) for p in params])]

    return Cell(step, grads, note=note)


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")

    def clear(p):
        p.grad = None

    return _tensor_cell(data, lambda v: ad.tensor(v, requires_grad=True), ad.relu,
                        lambda p: p.grad.item(), clear)


def build_torch(data, size):
    torch = peers.load("torch")

    def clear(p):
        p.grad = None

    return _tensor_cell(data, lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=True),
                        torch.relu, lambda p: p.grad.item(), clear)


def _jax_parts(data):
    jax = peers.load("jax")
    jnp = jax.numpy
    layers = map_params(data["layers"], jnp.float64)
    X, y = data["X"], data["y"]

    def loss(layers):
        return scalar_loss(layers, X, y, relu=lambda v: jnp.maximum(v, 0.0))

    return jax, jax.value_and_grad(loss), layers


def build_jax(data, size):
    jax, value_and_grad, layers = _jax_parts(data)
    return Cell(lambda: value_and_grad(layers), _flat_jax_grads, sync=jax.block_until_ready)


def build_jax_jit(data, size):
    jax, value_and_grad, layers = _jax_parts(data)
    compiled, compile_s = common.jax_compile(jax, value_and_grad, layers)
    return Cell(lambda: compiled(layers), _flat_jax_grads, sync=jax.block_until_ready,
                compile_s=compile_s)


def _flat_jax_grads(out):
    value, gradient_tree = out
    # micrograd's order, not the pytree's: flatten() walks the tree the way parameters() does.
    return float(value), [np.array([float(g) for g in flatten(gradient_tree)])]


def build_autograd(data, size):
    autograd = peers.load("autograd")
    anp = common.autograd_numpy()
    X, y = data["X"], data["y"]
    layers = data["layers"]

    def loss(layers):
        return scalar_loss(layers, X, y, relu=lambda v: anp.maximum(v, 0.0))

    value_and_grad = autograd.value_and_grad(loss)

    def grads(out):
        value, gradient_tree = out
        return float(value), [np.array([float(g) for g in flatten(gradient_tree)])]

    return Cell(lambda: value_and_grad(layers), grads)


def build_micrograd(data, size):
    Value = common.micrograd_engine().Value
    layers = map_params(data["layers"], Value)
    params = flatten(layers)
    X, y = data["X"], data["y"]

    def step():
        for p in params:
            p.grad = 0
        loss = scalar_loss(layers, X, y, relu=lambda v: v.relu())
        loss.backward()  # the graph is a few hundred levels deep: the default limit suffices
        return loss

    def grads(loss):
        return loss.data, [np.array([float(p.grad) for p in params])]

    return Cell(step, grads)


BUILDERS = common.builders(globals())
