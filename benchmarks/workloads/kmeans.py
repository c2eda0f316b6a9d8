"""kmeans: GradBench's k-means eval, its "dir" function (Newton step of the k-means objective).

GradBench (github.com/gradbench/gradbench, eval "kmeans") defines, for n points and k centroids
in d dimensions,

    cost(C) = sum_i min_j ||p_i - c_j||^2

and "dir" as J / Hdiag (elementwise), where (J, Hdiag) is the JVP of the gradient of cost at C
along a tensor of ones: J = grad cost(C) and Hdiag = H @ 1. The Hessian of cost is diagonal
(2 * the number of points assigned to each centroid, on each coordinate), so H @ 1 is its
diagonal and dir = C - (mean of each cluster): one Lloyd step as a Newton step.

Every contestant computes the distances the way GradBench's PyTorch tool does,
|p|^2 + |c|^2 - 2 p.c (a matmul), takes the min over centroids and sums; the AD libraries then
take jvp(grad(cost)) along ones (forward over reverse). The hand-written NumPy reference assigns
each point to its nearest centroid and writes J = 2 (count_j c_j - sum of its points) and
Hdiag = 2 count_j out.

Sizes: k = 100 clusters, n = 1000 points, d = 8 (ADBench/GradBench-sized); quick: k = 20,
n = 200, d = 4. Points are standard normal; the centroids start at the first k points (moved by
a little noise), so no cluster is empty and Hdiag has no zero (GradBench's inputs avoid empty
clusters the same way, or dir would divide by zero).
"""

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "kmeans"
TITLE = "GradBench kmeans dir: jvp(grad(cost)) along ones, J / Hdiag (k=100, n=1000, d=8; quick: 20, 200, 4)"
PER_OP = False
HAND_LABEL = "hand-written NumPy (assignments, J and Hdiag written out)"
LEAVES = ["J (k, d)", "Hdiag (k, d)", "dir (k, d)"]
ISOLATED = set()
NOT_APPLICABLE = {"micrograd": "scalar-only library, no forward mode"}
TARGETS = {"torch": {"max_ratio": 1.0, "strict": True, "text": "faster than PyTorch eager"}}
NOTES = ["kmeans: the compared values are GradBench's dir and the J and Hdiag it is made of; "
         "the loss column is the cost."]


def size(quick):
    return {"k": 20, "n": 200, "d": 4} if quick else {"k": 100, "n": 1000, "d": 8}


def n_ops(size):
    return None


def make_data(size):
    generator = common.rng(12)
    points = generator.normal(size=(size["n"], size["d"]))
    centroids = points[:size["k"]] + generator.normal(scale=1e-3, size=(size["k"], size["d"]))
    return {"points": points, "centroids": centroids}


def _outputs(cost, J, H, D):
    return float(cost), [np.asarray(a, dtype=np.float64) for a in (J, H, D)]


def _numpy_cost(data):
    P, C = data["points"], data["centroids"]
    return float(((P[:, None, :] - C[None, :, :]) ** 2).sum(axis=2).min(axis=1).sum())


def build_numpy(data, size):
    P, C = data["points"], data["centroids"]
    k = C.shape[0]
    p_sqr = (P * P).sum(axis=1)[:, None]

    def step():
        dists = p_sqr + (C * C).sum(axis=1)[None, :] - 2.0 * (P @ C.T)
        nearest = dists.argmin(axis=1)
        counts = np.bincount(nearest, minlength=k).astype(np.float64)
        sums = np.zeros_like(C)
        np.add.at(sums, nearest, P)
        J = 2.0 * (counts[:, None] * C - sums)
        H = np.broadcast_to(2.0 * counts[:, None], C.shape)
        return J, H, J / H

    cost = _numpy_cost(data)
    return Cell(step, lambda out: _outputs(cost, *out))


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")
    P = ad.tensor(data["points"])
    p_sqr = ad.tensor((data["points"] ** 2).sum(axis=1)[:, None])
    C = data["centroids"]
    ones = np.ones_like(C)

    def cost(C):
        dists = p_sqr + (C * C).sum(axis=1)[None, :] - 2.0 * (P @ C.T)
        return ad.min(dists, axis=1).sum()

    def step():
        J, H = ad.jvp(ad.grad(cost), (C,), (ones,))
        return J, H, J / H

    def grads(out):
        return _outputs(cost(ad.tensor(C)).item(), *(t.numpy() for t in out))

    return Cell(step, grads, note="ad.jvp(ad.grad(cost), (C,), (ones,))")


def build_torch(data, size):
    torch = peers.load("torch")
    P = torch.tensor(data["points"], dtype=torch.float64)
    p_sqr = (P * P).sum(dim=1)[:, None]
    C = torch.tensor(data["centroids"], dtype=torch.float64)
    ones = torch.ones_like(C)

    def cost(C):
        dists = p_sqr + (C * C).sum(dim=1)[None, :] - 2.0 * (P @ C.T)
        return dists.min(dim=1).values.sum()

    grad = torch.func.grad(cost)

    def step():
        J, H = torch.func.jvp(grad, (C,), (ones,))
        return J, H, J / H

    def grads(out):
        return _outputs(cost(C).item(), *(t.numpy() for t in out))

    return Cell(step, grads, note="torch.func.jvp(torch.func.grad(cost), (C,), (ones,))")


def build_autograd(data, size):
    autograd = peers.load("autograd")
    anp = common.autograd_numpy()
    P, C = data["points"], data["centroids"]
    p_sqr = (P * P).sum(axis=1)[:, None]
    ones = np.ones_like(C)

    def cost(C):
        dists = p_sqr + (C * C).sum(axis=1)[None, :] - 2.0 * anp.dot(P, C.T)
        return anp.sum(anp.min(dists, axis=1))

    grad = autograd.grad(cost)
    # HIPS autograd has no forward mode: H @ 1 as the gradient of <grad cost, ones>
    hvp = autograd.grad(lambda C: anp.sum(grad(C) * ones))

    def step():
        J, H = grad(C), hvp(C)
        return J, H, J / H

    return Cell(step, lambda out: _outputs(cost(C), *out),
                note="autograd.grad of <autograd.grad(cost), ones> (reverse over reverse)")


def _jax_parts(data):
    jax = peers.load("jax")
    jnp = jax.numpy
    P = jnp.asarray(data["points"])
    p_sqr = (P * P).sum(axis=1)[:, None]
    C = jnp.asarray(data["centroids"])
    ones = jnp.ones_like(C)

    def cost(C):
        dists = p_sqr + (C * C).sum(axis=1)[None, :] - 2.0 * (P @ C.T)
        return dists.min(axis=1).sum()

    def direction(C):
        J, H = jax.jvp(jax.grad(cost), (C,), (ones,))
        return J, H, J / H

    def grads(out):
        return _outputs(float(cost(C)), *(np.asarray(a) for a in out))

    return jax, direction, C, grads


def build_jax(data, size):
    jax, direction, C, grads = _jax_parts(data)
    return Cell(lambda: direction(C), grads, sync=jax.block_until_ready,
                note="jax.jvp(jax.grad(cost), (C,), (ones,))")


def build_jax_jit(data, size):
    jax, direction, C, grads = _jax_parts(data)
    compiled, compile_s = common.jax_compile(jax, direction, C)
    return Cell(lambda: compiled(C), grads, sync=jax.block_until_ready, compile_s=compile_s,
                note="jax.jit(jax.jvp(jax.grad(cost)))")


BUILDERS = common.builders(globals())
