"""matmul_chain: sum(tanh(X @ A @ B @ C)) with 512x512 float64 matrices.

Three forward and six backward GEMMs: BLAS does the work, so any gap to NumPy is copies,
transposes handed to BLAS the slow way, or a BLAS of lesser quality. Leaves: X, A, B, C.
"""

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "matmul_chain"
TITLE = "sum(tanh(X @ A @ B @ C)), 512x512 float64"
PER_OP = False
HAND_LABEL = "hand-written NumPy"
LEAVES = ["X", "A", "B", "C"]
ISOLATED = set()
NOT_APPLICABLE = {"micrograd": "scalar-only library"}
TARGETS = common.hand_target(1.1)
NOTES = []


def size(quick):
    return {"n": 128 if quick else 512}


def n_ops(size):
    return None


def make_data(size):
    n = size["n"]
    generator = common.rng(5)
    # Entries of size 1/sqrt(n) keep every product O(1), so tanh is not saturated.
    return {"leaves": [generator.normal(scale=1 / np.sqrt(n), size=(n, n)) for _ in range(4)]}


def build_numpy(data, size):
    X, A, B, C = data["leaves"]

    def step():
        XA = X @ A
        XAB = XA @ B
        t = np.tanh(XAB @ C)
        loss = np.sum(t)
        grad_out = 1.0 - t * t
        grad_C = XAB.T @ grad_out
        grad_XAB = grad_out @ C.T
        grad_B = XA.T @ grad_XAB
        grad_XA = grad_XAB @ B.T
        grad_A = X.T @ grad_XA
        grad_X = grad_XA @ A.T
        return loss, [grad_X, grad_A, grad_B, grad_C]

    return Cell(step, lambda out: (float(out[0]), out[1]))


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")

    def loss(X, A, B, C):
        return ad.sum(ad.tanh(X @ A @ B @ C))

    return common.pyautodiff_cell(data["leaves"], loss)


def build_torch(data, size):
    torch = peers.load("torch")

    def loss(X, A, B, C):
        return torch.sum(torch.tanh(X @ A @ B @ C))

    return common.torch_cell(data["leaves"], loss)


def _jax_loss(X, A, B, C):
    jnp = common.jnp()
    return jnp.sum(jnp.tanh(X @ A @ B @ C))


def build_jax(data, size):
    return common.jax_cell(data["leaves"], _jax_loss, jit=False)


def build_jax_jit(data, size):
    return common.jax_cell(data["leaves"], _jax_loss, jit=True)


def build_autograd(data, size):
    anp = common.autograd_numpy()

    def loss(X, A, B, C):
        return anp.sum(anp.tanh(X @ A @ B @ C))

    return common.autograd_cell(data["leaves"], loss)


BUILDERS = common.builders(globals())
