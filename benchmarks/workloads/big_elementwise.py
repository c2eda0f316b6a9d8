"""big_elementwise: sum(tanh(x*w + b) * exp(-x*x)) over 10^6 float64, w and b broadcast scalars.

Large arrays and cheap ops: memory bandwidth, temporaries and kernel quality decide, not
dispatch. Leaves: x (10^6), w and b (0-d). JAX jit fuses the whole expression into one loop,
which no eager library can, so it is shown for orientation and has no target.
"""

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "big_elementwise"
TITLE = "sum(tanh(x*w + b) * exp(-x*x)), x of 10^6 float64, scalar w and b"
PER_OP = False
HAND_LABEL = "hand-written NumPy"
LEAVES = ["x", "w", "b"]
ISOLATED = set()
NOT_APPLICABLE = {"micrograd": "scalar-only library (10^6 Python objects per array)"}
TARGETS = common.hand_target(1.2)
NOTES = []


def size(quick):
    return {"n": 100_000 if quick else 1_000_000}


def n_ops(size):
    return None


def make_data(size):
    generator = common.rng(4)
    return {"leaves": [generator.normal(size=size["n"]), np.float64(0.7), np.float64(-0.2)]}


def build_numpy(data, size):
    x, w, b = data["leaves"]

    def step():
        t = np.tanh(x * w + b)
        e = np.exp(-x * x)
        loss = np.sum(t * e)
        grad_u = e * (1.0 - t * t)  # through the product, then tanh
        grad_x = grad_u * w - 2.0 * x * t * e
        return loss, [grad_x, np.sum(grad_u * x), np.sum(grad_u)]

    return Cell(step, lambda out: (float(out[0]), out[1]))


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")

    def loss(x, w, b):
        return ad.sum(ad.tanh(x * w + b) * ad.exp(-x * x))

    return common.pyautodiff_cell(data["leaves"], loss)


def build_torch(data, size):
    torch = peers.load("torch")

    def loss(x, w, b):
        return torch.sum(torch.tanh(x * w + b) * torch.exp(-x * x))

    return common.torch_cell(data["leaves"], loss)


def _jax_loss(x, w, b):
    jnp = common.jnp()
    return jnp.sum(jnp.tanh(x * w + b) * jnp.exp(-x * x))


def build_jax(data, size):
    return common.jax_cell(data["leaves"], _jax_loss, jit=False)


def build_jax_jit(data, size):
    return common.jax_cell(data["leaves"], _jax_loss, jit=True)


def build_autograd(data, size):
    anp = common.autograd_numpy()

    def loss(x, w, b):
        return anp.sum(anp.tanh(x * w + b) * anp.exp(-x * x))

    return common.autograd_cell(data["leaves"], loss)


BUILDERS = common.builders(globals())
