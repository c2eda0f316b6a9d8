"""broadcast_reduce: mean(sum(a * b, axis=1)), a of (256,1,64) and b of (1,128,64).

The product broadcasts to (256,128,64), 2M float64; the backward must undo the broadcast by
summing over the broadcast axes ("sum and broadcast are duals"). Leaves: a, b.

The hand-written baseline does what a reverse-mode AD has to do, op by op: the cotangent of
the mean broadcast back over axis 1, multiplied by the other factor, summed over the axes that
factor was broadcast along. (A person could shortcut da = g * b.sum(axis=1); no AD does, so
that would measure algebra, not overhead.)
"""

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "broadcast_reduce"
TITLE = "mean(sum((256,1,64) * (1,128,64), axis=1))"
PER_OP = False
HAND_LABEL = "hand-written NumPy, op by op as an AD must (constrained: no algebraic shortcut)"
LEAVES = ["a", "b"]
ISOLATED = set()
NOT_APPLICABLE = {"micrograd": "scalar-only library"}
TARGETS = common.hand_target(1.2)
NOTES = []


def size(quick):
    return {"a": (64, 1, 64), "b": (1, 32, 64)} if quick else {"a": (256, 1, 64), "b": (1, 128, 64)}


def n_ops(size):
    return None


def make_data(size):
    generator = common.rng(6)
    return {"leaves": [generator.normal(size=size["a"]), generator.normal(size=size["b"])]}


def build_numpy(data, size):
    a, b = data["leaves"]

    def step():
        product = a * b
        summed = np.sum(product, axis=1)
        loss = np.mean(summed)
        grad_summed = np.full(summed.shape, 1.0 / summed.size)
        # sum's VJP broadcasts back over axis 1; mul's VJP multiplies by the other factor and
        # sums over the axes that factor was broadcast along.
        grad_product = np.broadcast_to(np.expand_dims(grad_summed, 1), product.shape)
        grad_a = np.sum(grad_product * b, axis=1, keepdims=True)
        grad_b = np.sum(grad_product * a, axis=0, keepdims=True)
        return loss, [grad_a, grad_b]

    return Cell(step, lambda out: (float(out[0]), out[1]))


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")

    def loss(a, b):
        return ad.mean(ad.sum(a * b, axis=1))

    return common.pyautodiff_cell(data["leaves"], loss)


def build_torch(data, size):
    torch = peers.load("torch")

    def loss(a, b):
        return torch.mean(torch.sum(a * b, dim=1))

    return common.torch_cell(data["leaves"], loss)


def _jax_loss(a, b):
    jnp = common.jnp()
    return jnp.mean(jnp.sum(a * b, axis=1))


def build_jax(data, size):
    return common.jax_cell(data["leaves"], _jax_loss, jit=False)


def build_jax_jit(data, size):
    return common.jax_cell(data["leaves"], _jax_loss, jit=True)


def build_autograd(data, size):
    anp = common.autograd_numpy()

    def loss(a, b):
        return anp.mean(anp.sum(a * b, axis=1))

    return common.autograd_cell(data["leaves"], loss)


BUILDERS = common.builders(globals())
