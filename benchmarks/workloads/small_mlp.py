"""small_mlp: a 784-128-64-10 MLP step at batch 32 (small tensors: per-op overhead shows).

ReLU hidden layers, mean softmax cross-entropy over the batch. Forward + backward with gradients
for the six parameters; the input batch is data, not a leaf. Each library computes the loss the
way its users would (PyTorch F.cross_entropy, JAX jax.nn.log_softmax, ...); pyautodiff uses
ad.nn.functional.cross_entropy, else ad.log_softmax, else a log-softmax composed from
max/exp/log/sum with the max detached (the cell's note says which ran).
"""

import importlib

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "small_mlp"
TITLE = "784-128-64-10 MLP, batch 32, ReLU, softmax cross-entropy"
PER_OP = False
HAND_LABEL = "hand-written NumPy"
LEAVES = ["W1", "b1", "W2", "b2", "W3", "b3"]
ISOLATED = set()
NOT_APPLICABLE = {"micrograd": "scalar-only library (no tensors)"}
TARGETS = common.hand_target(1.1)
NOTES = []


def size(quick):
    return {"layers": [784, 128, 64, 10], "batch": 32}


def n_ops(size):
    return None


def make_data(size):
    generator = common.rng(2)
    sizes, batch = size["layers"], size["batch"]
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        params.append(generator.normal(scale=1 / np.sqrt(n_in), size=(n_in, n_out)))
        params.append(generator.normal(scale=0.1, size=n_out))
    labels = generator.integers(0, sizes[-1], size=batch)
    return {
        "X": generator.normal(size=(batch, sizes[0])),
        "labels": labels,
        "onehot": np.eye(sizes[-1])[labels],
        "params": params,
    }


def build_numpy(data, size):
    X, labels = data["X"], data["labels"]
    W1, b1, W2, b2, W3, b3 = data["params"]
    batch = X.shape[0]
    rows = np.arange(batch)

    def step():
        z1 = X @ W1 + b1
        h1 = np.maximum(z1, 0.0)
        z2 = h1 @ W2 + b2
        h2 = np.maximum(z2, 0.0)
        logits = h2 @ W3 + b3
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(total[:, 0]) - shifted[rows, labels])

        grad_logits = exp / total  # softmax minus one-hot, over the batch
        grad_logits[rows, labels] -= 1.0
        grad_logits /= batch
        grad_W3 = h2.T @ grad_logits
        grad_b3 = grad_logits.sum(axis=0)
        grad_z2 = (grad_logits @ W3.T) * (z2 > 0)
        grad_W2 = h1.T @ grad_z2
        grad_b2 = grad_z2.sum(axis=0)
        grad_z1 = (grad_z2 @ W2.T) * (z1 > 0)
        grad_W1 = X.T @ grad_z1
        grad_b1 = grad_z1.sum(axis=0)
        return loss, [grad_W1, grad_b1, grad_W2, grad_b2, grad_W3, grad_b3]

    return Cell(step, lambda out: (float(out[0]), out[1]))


def _pyautodiff_loss(ad, labels, onehot, batch):
    """The best cross-entropy pyautodiff offers today, and a note saying which one it is."""
    try:
        functional = importlib.import_module("pyautodiff.nn.functional")
    except ImportError:
        functional = None
    if functional is not None and hasattr(functional, "cross_entropy"):
        return (lambda logits: functional.cross_entropy(logits, labels),
                "loss: ad.nn.functional.cross_entropy")
    if hasattr(ad, "log_softmax"):
        return (lambda logits: -(ad.log_softmax(logits, axis=-1) * onehot).sum() * (1.0 / batch),
                "loss: ad.log_softmax times a one-hot mask")

    def composed(logits):
        shifted = logits - ad.max(logits.detach(), axis=1, keepdims=True)
        log_total = ad.log(ad.sum(ad.exp(shifted), axis=1, keepdims=True))
        return -((shifted - log_total) * onehot).sum() * (1.0 / batch)

    return composed, "loss: log-softmax composed from max (detached)/exp/log/sum (no ad.log_softmax yet)"


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")
    X = ad.tensor(data["X"])
    params = [ad.tensor(p, requires_grad=True) for p in data["params"]]
    W1, b1, W2, b2, W3, b3 = params
    loss_of, note = _pyautodiff_loss(ad, data["labels"], ad.tensor(data["onehot"]),
                                     X.shape[0])

    def step():
        for p in params:
            p.grad = None
        h1 = ad.relu(X @ W1 + b1)
        h2 = ad.relu(h1 @ W2 + b2)
        loss = loss_of(h2 @ W3 + b3)
        loss.backward()
        return loss

    def grads(loss):
        return loss.item(), [p.grad.numpy() for p in params]

    return Cell(step, grads, note=note)


def build_torch(data, size):
    torch = peers.load("torch")
    functional = torch.nn.functional
    X = torch.tensor(data["X"])
    labels = torch.tensor(data["labels"])
    params = [torch.tensor(p, requires_grad=True) for p in data["params"]]
    W1, b1, W2, b2, W3, b3 = params

    def step():
        for p in params:
            p.grad = None
        h1 = torch.relu(X @ W1 + b1)
        h2 = torch.relu(h1 @ W2 + b2)
        loss = functional.cross_entropy(h2 @ W3 + b3, labels)
        loss.backward()
        return loss

    def grads(loss):
        return loss.item(), [p.grad.numpy() for p in params]

    return Cell(step, grads, note="loss: torch.nn.functional.cross_entropy")


def _jax_parts(data):
    jax = peers.load("jax")
    jnp = jax.numpy
    X = jnp.asarray(data["X"])
    labels = jnp.asarray(data["labels"])
    params = [jnp.asarray(p) for p in data["params"]]

    def loss(params):
        W1, b1, W2, b2, W3, b3 = params
        h1 = jax.nn.relu(X @ W1 + b1)
        h2 = jax.nn.relu(h1 @ W2 + b2)
        log_probs = jax.nn.log_softmax(h2 @ W3 + b3, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))

    return jax, jax.value_and_grad(loss), params


def build_jax(data, size):
    jax, value_and_grad, params = _jax_parts(data)
    return Cell(lambda: value_and_grad(params), common.jax_grads, sync=jax.block_until_ready)


def build_jax_jit(data, size):
    jax, value_and_grad, params = _jax_parts(data)
    compiled, compile_s = common.jax_compile(jax, value_and_grad, params)
    return Cell(lambda: compiled(params), common.jax_grads, sync=jax.block_until_ready,
                compile_s=compile_s)


def build_autograd(data, size):
    autograd = peers.load("autograd")
    anp = common.autograd_numpy()
    logsumexp = importlib.import_module("autograd.scipy.special").logsumexp
    X, onehot = data["X"], data["onehot"]
    batch = X.shape[0]

    def loss(params):
        W1, b1, W2, b2, W3, b3 = params
        h1 = anp.maximum(X @ W1 + b1, 0.0)
        h2 = anp.maximum(h1 @ W2 + b2, 0.0)
        logits = h2 @ W3 + b3
        log_probs = logits - logsumexp(logits, axis=1, keepdims=True)
        return -anp.sum(log_probs * onehot) / batch

    value_and_grad = autograd.value_and_grad(loss)
    params = list(data["params"])

    def grads(out):
        value, gradients = out
        return float(value), [np.asarray(g) for g in gradients]

    return Cell(lambda: value_and_grad(params), grads,
                note="loss: logits - autograd.scipy.special.logsumexp, one-hot mask")


BUILDERS = common.builders(globals())
